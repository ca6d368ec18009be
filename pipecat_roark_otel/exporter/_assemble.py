"""Reassemble a call-ended body from the end record and the call's segment records; pure."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, Discriminator, Field, StrictInt, Tag, TypeAdapter

from ._payloads import CallEnded, ToolCallRecord, ToolResultRecord, TranscriptTurn

_Record = TranscriptTurn | ToolCallRecord | ToolResultRecord
# One valid entry of a segment record: (onset_ns, seq, kind, record).
Entry = tuple[Any, Any, str, _Record]


def _tool_kind(record: Any) -> str:
    # As _valid decides: "tool_call" only when the record says so.
    called = isinstance(record, dict) and record.get("kind") == "tool_call"
    return "tool_call" if called else "other"


class _Turn(BaseModel):
    seq: StrictInt
    onset_ns: StrictInt
    kind: Literal["turn"]
    record: TranscriptTurn


class _Tool(BaseModel):
    seq: StrictInt
    onset_ns: StrictInt
    kind: Literal["tool"]
    record: Annotated[
        Annotated[ToolCallRecord, Tag("tool_call")] | Annotated[ToolResultRecord, Tag("other")],
        Discriminator(_tool_kind),
    ]


class _Segment(BaseModel):
    entries: list[Annotated[_Turn | _Tool, Field(discriminator="kind")]] = []


# A whole segment at once, straight from its file's bytes: one call into pydantic's core.
_SEGMENT: TypeAdapter[_Segment] = TypeAdapter(_Segment)


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


def segment_entries(segment: bytes | Mapping[str, Any]) -> tuple[list[Entry], int]:
    """The valid entries of one segment record, and how many were left out.

    ``bytes``: the segment file as written; raises ``ValueError`` if it is not JSON (a
    damaged file) and ``TypeError`` if it is JSON but not an object.
    """
    try:
        if isinstance(segment, bytes):
            whole = _SEGMENT.validate_json(segment)
        else:
            whole = _SEGMENT.validate_python(segment)
    except pydantic.ValidationError:
        pass  # not all valid (or not strictly typed): entry by entry below
    else:
        return [(e.onset_ns, e.seq, e.kind, e.record) for e in whole.entries], 0
    data = json.loads(segment) if isinstance(segment, bytes) else segment
    if not isinstance(data, Mapping):
        raise TypeError("a segment record is not a JSON object")
    entries = data.get("entries", [])
    valid = [
        (e["onset_ns"], e["seq"], e["kind"], m) for e in entries if (m := _valid(e)) is not None
    ]
    return valid, len(entries) - len(valid)


def assemble(payload: Mapping[str, Any], entries: Iterable[Entry]) -> CallEnded:
    """call-ended from the end record's payload and the valid entries of its segments.

    Turns go by speech onset (seq breaks ties: segments may arrive out of order);
    tool records keep the order they happened in, which ``seq`` is. Raises
    ``pydantic.ValidationError`` when the payload itself is bad.
    """
    entries = list(entries)
    turns = sorted((e for e in entries if e[2] == "turn"), key=lambda e: (e[0], e[1]))
    tools = sorted((e for e in entries if e[2] == "tool"), key=lambda e: e[1])
    body = dict(payload)
    # Each record was validated once, in segment_entries: the models go in as they are.
    if turns:
        body["transcript"] = [e[3] for e in turns]
    if tools:
        body["toolCalls"] = [e[3] for e in tools]
    return CallEnded.model_validate(body)


def assemble_call_ended(
    end: dict[str, Any], segments: list[dict[str, Any]]
) -> tuple[dict[str, Any], int]:
    """The full call-ended wire dict, and how many invalid records were left out."""
    entries: list[Entry] = []
    rejected = 0
    for segment in segments:
        valid, left_out = segment_entries(segment)
        entries += valid
        rejected += left_out
    return assemble(end["payload"], entries).wire(), rejected
