"""Reassemble a call-ended body from the end record and the call's segment records; pure."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._payloads import CallEnded


def _entries(segments: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for segment in segments for entry in segment.get("entries", [])]


def assemble_call_ended(end: dict[str, Any], segments: list[dict[str, Any]]) -> dict[str, Any]:
    """The full call-ended wire dict. Raises ``pydantic.ValidationError`` on a bad record.

    Turns go by speech onset (seq breaks ties: segments may arrive out of order);
    tool records keep the order they happened in, which ``seq`` is.
    """
    entries = _entries(segments)
    turns = sorted(
        (e for e in entries if e.get("kind") == "turn"),
        key=lambda e: (e["onset_ns"], e["seq"]),
    )
    tools = sorted((e for e in entries if e.get("kind") == "tool"), key=lambda e: e["seq"])
    unknown = [e.get("kind") for e in entries if e.get("kind") not in ("turn", "tool")]
    if unknown:
        raise ValueError(f"unknown segment entry kind(s): {sorted(set(map(str, unknown)))}")
    body = dict(end["payload"])
    if turns:
        body["transcript"] = [e["record"] for e in turns]
    if tools:
        body["toolCalls"] = [e["record"] for e in tools]
    return CallEnded.model_validate(body).wire()
