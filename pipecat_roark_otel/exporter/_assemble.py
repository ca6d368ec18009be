"""Reassemble a call-ended body from the end record and the call's segment records; pure."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pydantic

from ._payloads import CallEnded, ToolCallRecord, ToolResultRecord, TranscriptTurn

_Record = TranscriptTurn | ToolCallRecord | ToolResultRecord


def _valid(entry: Any) -> _Record | None:
    """One entry checked alone, so a bad record costs only itself, never the call."""
    try:
        record = entry["record"]
        int(entry["seq"])
        int(entry["onset_ns"])
        if entry["kind"] == "turn":
            return TranscriptTurn.model_validate(record)
        if entry["kind"] == "tool" and record.get("kind") == "tool_call":
            return ToolCallRecord.model_validate(record)
        if entry["kind"] == "tool":
            return ToolResultRecord.model_validate(record)
    except (pydantic.ValidationError, KeyError, TypeError, ValueError, AttributeError):
        pass
    return None


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
    # Each record is validated once, here: the models go into CallEnded as they are.
    valid = [(e, model) for e in entries if (model := _valid(e)) is not None]
    turns = sorted(
        (v for v in valid if v[0]["kind"] == "turn"), key=lambda v: (v[0]["onset_ns"], v[0]["seq"])
    )
    tools = sorted((v for v in valid if v[0]["kind"] == "tool"), key=lambda v: v[0]["seq"])
    body = dict(end["payload"])
    if turns:
        body["transcript"] = [model for _, model in turns]
    if tools:
        body["toolCalls"] = [model for _, model in tools]
    return CallEnded.model_validate(body).wire(), len(entries) - len(valid)
