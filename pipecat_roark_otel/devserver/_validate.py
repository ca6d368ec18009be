"""Strict body validation with the project's wire models; pure, so the HTTP shell stays thin."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError

from ..exporter._payloads import CallEnded, CallStarted, ChunkUploadRequest

_EVENTS: dict[str, type[BaseModel]] = {"call-started": CallStarted, "call-ended": CallEnded}


class Rejection(Exception):
    """A refused body: the HTTP status, a one-line message and per-field details."""

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


def parse_object(raw: bytes) -> dict[str, Any]:
    """The JSON object in ``raw``; 400 if it is not JSON or not an object."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Rejection(400, f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Rejection(400, f"body must be a JSON object, got {type(body).__name__}")
    return body


def _model(cls: type[BaseModel], body: dict[str, Any], what: str) -> BaseModel:
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        details = [
            {"field": ".".join(str(p) for p in err["loc"]) or "(body)", "message": err["msg"]}
            for err in exc.errors()
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


def _timestamps(body: dict[str, Any]) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = [
        (k, body.get(k)) for k in ("eventTimestamp", "callStartedAt", "callEndedAt")
    ]
    for i, turn in enumerate(body.get("transcript") or []):
        out += [(f"transcript.{i}.{k}", turn.get(k)) for k in ("timestamp", "endTimestamp")]
    for i, tool in enumerate(body.get("toolCalls") or []):
        out.append((f"toolCalls.{i}.timestamp", tool.get("timestamp")))
    return out


def webhook_body(body: dict[str, Any]) -> dict[str, Any]:
    """A valid call-started/call-ended body, as received; Rejection(422) otherwise."""
    event = body.get("event")
    if not isinstance(event, str) or event not in _EVENTS:
        raise Rejection(
            422,
            f"unknown event {event!r}; expected 'call-started' or 'call-ended'",
            [{"field": "event", "message": "must be 'call-started' or 'call-ended'"}],
        )
    _model(_EVENTS[event], body, event)
    details = [
        {"field": name, "message": problem}
        for name, value in _timestamps(body)
        if (problem := _utc_problem(value)) is not None
    ]
    has_rate = body.get("recordingSampleRate") is not None
    if has_rate != (body.get("recordingNumChannels") is not None):
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
    if "contentType" not in body:
        raise Rejection(
            422,
            "invalid chunk-upload-url body: contentType",
            [{"field": "contentType", "message": "Field required"}],
        )
    model = _model(ChunkUploadRequest, body, "chunk-upload-url")
    assert isinstance(model, ChunkUploadRequest)
    return model
