"""The local Roark's own reading of the wire contract (docs/CONTRACT.md); pure.

Written from the contract document, never from the exporter's models: the
server our tests trust must catch a drift between what we send and what Roark
accepts. Every number from the wire is bounded here, before anything uses it.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

# Bounds on wire numbers (our choice; the contract gives types only).
MAX_CHUNK_INDEX = 1_000_000  # ~500 GiB of 512 KiB chunks: no real call comes close
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 384_000
MAX_CHANNELS = 8
MAX_OFFSET_MS = 2**31 - 1  # ~24 days of audio
MAX_JSON_DEPTH = 32


class Rejection(Exception):
    """A refused request: the HTTP status, a one-line message and per-field details."""

    def __init__(
        self, status: int, message: str, details: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message, "statusCode": self.status}
        if self.details:
            out["details"] = self.details
        return out


# -- JSON with limits -------------------------------------------------------------------------


class _NotJson(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not JSON")


def _depth(value: Any) -> int:
    """Nesting depth, iteratively (the parser already refused anything deeper than ~1000)."""
    deepest, stack = 1, [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                deepest = max(deepest, level + 1)
                stack.append((child, level + 1))
    return deepest


def parse_object(raw: bytes) -> dict[str, Any]:
    """The JSON object in ``raw``; 400 if it is not bounded JSON or not an object."""
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise Rejection(400, "malformed JSON: nested too deeply") from None
    except ValueError as exc:  # also CPython's 4,300-digit limit on integers
        raise Rejection(400, f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Rejection(400, f"body must be a JSON object, got {type(body).__name__}")
    if _depth(body) > MAX_JSON_DEPTH:
        raise Rejection(400, f"malformed JSON: nested deeper than {MAX_JSON_DEPTH}")
    return body


# -- the contract's bodies ----------------------------------------------------------------------

_Id = Annotated[StrictStr, Field(min_length=1)]
_OffsetMs = Annotated[StrictInt, Field(ge=0, le=MAX_OFFSET_MS)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CallStarted(_Body):
    event: Literal["call-started"]
    pipecatCallId: _Id
    eventTimestamp: StrictStr
    agentId: _Id
    agentName: StrictStr | None = None
    agentPrompt: StrictStr | None = None


class Turn(_Body):
    role: Literal["user", "assistant", "system"]
    content: StrictStr
    timestamp: StrictStr
    endTimestamp: StrictStr
    audioOffsetMs: _OffsetMs | None = None
    endAudioOffsetMs: _OffsetMs | None = None
    userId: StrictStr | None = None
    language: StrictStr | None = None


# A frame without a tool-call id goes out with "" (as Roark's own observer sends it):
# the contract asks for a string, not a non-empty one.
class ToolCall(_Body):
    kind: Literal["tool_call"]
    toolCallId: StrictStr
    name: StrictStr
    arguments: StrictStr  # a JSON string, never an object
    timestamp: StrictStr
    audioOffsetMs: _OffsetMs | None = None


class ToolResult(_Body):
    kind: Literal["tool_result"]
    toolCallId: StrictStr
    content: StrictStr
    timestamp: StrictStr
    audioOffsetMs: _OffsetMs | None = None


class CallEnded(_Body):
    event: Literal["call-ended"]
    pipecatCallId: _Id
    eventTimestamp: StrictStr
    # Required, but may be null: the field must be sent.
    callStartedAt: StrictStr | None = Field(...)
    callEndedAt: StrictStr | None = Field(...)
    callEndedReason: StrictStr
    agentSpokeFirst: StrictBool | None = None
    recordingSampleRate: (
        Annotated[StrictInt, Field(ge=MIN_SAMPLE_RATE, le=MAX_SAMPLE_RATE)] | None
    ) = None
    recordingNumChannels: Annotated[StrictInt, Field(ge=1, le=MAX_CHANNELS)] | None = None
    transcript: list[Turn] | None = None
    toolCalls: list[Annotated[ToolCall | ToolResult, Field(discriminator="kind")]] | None = None


class ChunkUploadRequest(_Body):
    pipecatCallId: _Id
    chunkIndex: Annotated[StrictInt, Field(ge=0, le=MAX_CHUNK_INDEX)]
    contentType: Literal["audio/pcm"]


_EVENTS: dict[str, type[_Body]] = {"call-started": CallStarted, "call-ended": CallEnded}


def _model(cls: type[_Body], body: dict[str, Any], what: str) -> _Body:
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        details = [
            {"field": ".".join(str(p) for p in err["loc"]) or "(body)", "message": err["msg"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
        fields = ", ".join(sorted({d["field"] for d in details}))
        raise Rejection(422, f"invalid {what} body: {fields}", details) from None


def _utc_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        return "not an ISO 8601 timestamp"
    if ts.utcoffset() != timedelta(0):
        return "must be UTC (Z or +00:00)"
    return None


def _timestamps(body: CallStarted | CallEnded) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = [("eventTimestamp", body.eventTimestamp)]
    if isinstance(body, CallEnded):
        out += [("callStartedAt", body.callStartedAt), ("callEndedAt", body.callEndedAt)]
        for i, turn in enumerate(body.transcript or []):
            out += [
                (f"transcript.{i}.timestamp", turn.timestamp),
                (f"transcript.{i}.endTimestamp", turn.endTimestamp),
            ]
        for i, tool in enumerate(body.toolCalls or []):
            out.append((f"toolCalls.{i}.timestamp", tool.timestamp))
    return out


def webhook_body(body: dict[str, Any]) -> dict[str, Any]:
    """A valid call-started/call-ended body, as received; Rejection(422) otherwise."""
    event = body.get("event")
    if not isinstance(event, str) or event not in _EVENTS:
        raise Rejection(
            422,
            f"unknown event {event!r:.60}; expected 'call-started' or 'call-ended'",
            [{"field": "event", "message": "must be 'call-started' or 'call-ended'"}],
        )
    model = _model(_EVENTS[event], body, event)
    assert isinstance(model, CallStarted | CallEnded)
    details = [
        {"field": name, "message": problem}
        for name, value in _timestamps(model)
        if (problem := _utc_problem(value)) is not None
    ]
    if isinstance(model, CallEnded) and (model.recordingSampleRate is None) != (
        model.recordingNumChannels is None
    ):
        details.append(
            {
                "field": "recordingSampleRate/recordingNumChannels",
                "message": "both or neither must be present",
            }
        )
    if details:
        fields = ", ".join(d["field"] for d in details)
        raise Rejection(422, f"invalid {event} body: {fields}", details)
    return body


def chunk_request(body: dict[str, Any]) -> ChunkUploadRequest:
    """A valid presign request; ``contentType`` must be sent, not defaulted."""
    model = _model(ChunkUploadRequest, body, "chunk-upload-url")
    assert isinstance(model, ChunkUploadRequest)
    return model
