"""Reassemble a call-ended body from the end record and the call's segment records; pure."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pydantic

from ._payloads import CallEnded, ToolCallRecord, ToolResultRecord, TranscriptTurn


def _valid(entry: Any) -> bool:
    """One entry checked alone, so a bad record costs only itself, never the call."""
    try:
        record = entry["record"]
        int(entry["seq"])
        int(entry["onset_ns"])
        if entry["kind"] == "turn":
            TranscriptTurn.model_validate(record)
        elif entry["kind"] == "tool" and record.get("kind") == "tool_call":
            ToolCallRecord.model_validate(record)
        elif entry["kind"] == "tool":
            ToolResultRecord.model_validate(record)
        else:
            return False
    except (pydantic.ValidationError, KeyError, TypeError, ValueError, AttributeError):
        return False
    return True


def _entries(segments: Iterable[dict[str, Any]]) -> list[Any]:
    return [entry for segment in segments for entry in segment.get("entries", [])]


def assemble_call_ended(
    end: dict[str, Any], segments: list[dict[str, Any]]
) -> tuple[dict[str, Any], int]:
    """The full call-ended wire dict, and how many invalid records were left out.

    Turns go by speech onset (seq breaks ties: segments may arrive out of order);
    tool records keep the order they happened in, which ``seq`` is. Raises
    ``pydantic.ValidationError`` when the end record itself is bad.
    """
    entries = _entries(segments)
    valid = [e for e in entries if _valid(e)]
    turns = sorted(
        (e for e in valid if e["kind"] == "turn"), key=lambda e: (e["onset_ns"], e["seq"])
    )
    tools = sorted((e for e in valid if e["kind"] == "tool"), key=lambda e: e["seq"])
    body = dict(end["payload"])
    if turns:
        body["transcript"] = [e["record"] for e in turns]
    if tools:
        body["toolCalls"] = [e["record"] for e in tools]
    return CallEnded.model_validate(body).wire(), len(entries) - len(valid)
