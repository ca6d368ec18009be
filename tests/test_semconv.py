"""The README's attribute table is the conventions module, neither more nor less."""

from __future__ import annotations

import re
from pathlib import Path

from pipecat_roark_otel import semconv

README = Path(__file__).resolve().parents[1] / "README.md"


def _names_in_module() -> set[str]:
    names = set()
    for key, value in vars(semconv).items():
        if key.isupper() and isinstance(value, str) and key != "INSTRUMENTATION_SCOPE":
            names.add(value)
    return names


def _names_in_readme() -> set[str]:
    text = README.read_text()
    table = text.split("<!-- semconv-table -->")[1].split("<!-- /semconv-table -->")[0]
    return set(re.findall(r"^\| `([^`]+)` \|", table, flags=re.M))


def test_readme_table_matches_semconv() -> None:
    assert _names_in_readme() == _names_in_module()


def test_gen_ai_names_follow_otel_conventions() -> None:
    assert semconv.TOOL_CALL_ID == "gen_ai.tool.call.id"
    assert semconv.TOOL_NAME == "gen_ai.tool.name"
    assert semconv.GEN_AI_CONVERSATION_ID == "gen_ai.conversation.id"
    assert semconv.CONVERSATION_ID == "conversation.id"
