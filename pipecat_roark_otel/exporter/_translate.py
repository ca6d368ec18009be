"""Our spans to outbox items. Pure: a ReadableSpan in, wire dicts out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.util.types import AttributeValue

from .. import semconv as sc
from .._capture import iso_from_ns
from ._payloads import CallEnded, CallStarted, EndRecord

Attrs = Mapping[str, AttributeValue]


@dataclass(frozen=True, slots=True)
class Item:
    """One outbox write: what kind, for which call, and its body."""

    kind: Literal["started", "segment", "end"]
    call_id: str
    body: dict[str, Any]
    index: int = 0


def from_us(span: ReadableSpan) -> bool:
    """Written by this package: the call record and the tool spans alike."""
    scope = span.instrumentation_scope
    return scope is not None and scope.name == sc.INSTRUMENTATION_SCOPE


def is_ours(span: ReadableSpan) -> bool:
    """One of the spans that carry Roark's record.

    Not tool spans (for trace backends only), nor the trace backend's copy of a call
    whose record went to Roark by its own path (``_roark_path``).
    """
    if span.name not in sc.SPAN_NAMES or not from_us(span):
        return False
    scope = span.instrumentation_scope
    return not (scope is not None and (scope.attributes or {}).get(sc.SCOPE_BACKEND_COPY))


def span_call_id(span: ReadableSpan) -> str | None:
    return _text(span.attributes or {}, sc.CONVERSATION_ID)


def translate(span: ReadableSpan) -> Item | None:
    """The outbox item a span of ours stands for; None for a span that carries none.

    Raises ValueError for a record with numbers out of range (see ``EndRecord``).
    """
    attrs: Attrs = span.attributes or {}
    call_id = _text(attrs, sc.CONVERSATION_ID)
    if call_id is None:
        return None
    if span.name == sc.SPAN_CALL_START:
        return Item("started", call_id, started_payload(call_id, attrs))
    if span.name == sc.SPAN_CALL_SEGMENT:
        entries = [entry for e in span.events if (entry := segment_entry(e)) is not None]
        return Item("segment", call_id, {"entries": entries}, _int(attrs, sc.SEGMENT_INDEX) or 0)
    if span.name == sc.SPAN_CALL:
        return Item("end", call_id, end_record(call_id, attrs))
    return None


def started_payload(call_id: str, attrs: Attrs) -> dict[str, Any]:
    return CallStarted(
        pipecatCallId=call_id,
        eventTimestamp=_str(attrs, sc.CALL_STARTED_AT) or "",
        agentId=_text(attrs, sc.AGENT_ID) or "",
        agentName=_str(attrs, sc.AGENT_NAME) or None,
        agentPrompt=_text(attrs, sc.AGENT_PROMPT) or None,
    ).wire()


def _compact(**fields: Any) -> dict[str, Any]:
    """A wire record in contract order, optional fields omitted (validated at assembly)."""
    return {k: v for k, v in fields.items() if v is not None}


def segment_entry(event: Event) -> dict[str, Any] | None:
    """One event as an outbox entry. Plain dicts: export() stays cheap, and
    ``assemble_call_ended`` validates every record against the contract models."""
    a: Attrs = event.attributes or {}
    entry: dict[str, Any] = {"seq": _int(a, sc.EVENT_SEQ) or 0, "onset_ns": event.timestamp}
    if event.name == sc.EVENT_TURN:
        entry["kind"] = "turn"
        entry["record"] = _compact(
            role=_str(a, sc.TURN_ROLE) or "user",
            content=_text(a, sc.TURN_CONTENT) or "",
            timestamp=_str(a, sc.TIMESTAMP) or "",
            endTimestamp=_str(a, sc.TURN_END_TIMESTAMP) or "",
            audioOffsetMs=_int(a, sc.AUDIO_OFFSET_MS),
            endAudioOffsetMs=_int(a, sc.TURN_END_AUDIO_OFFSET_MS),
            userId=_str(a, sc.TURN_USER_ID),
            language=_str(a, sc.TURN_LANGUAGE),
        )
    elif event.name == sc.EVENT_TOOL_CALL:
        entry["kind"] = "tool"
        entry["record"] = _compact(
            kind="tool_call",
            toolCallId=_text(a, sc.TOOL_CALL_ID) or "",
            name=_str(a, sc.TOOL_NAME) or "",
            arguments=_text(a, sc.TOOL_ARGUMENTS) or "{}",
            timestamp=iso_from_ns(event.timestamp),
            audioOffsetMs=_int(a, sc.AUDIO_OFFSET_MS),
        )
    elif event.name == sc.EVENT_TOOL_RESULT:
        entry["kind"] = "tool"
        entry["record"] = _compact(
            kind="tool_result",
            toolCallId=_text(a, sc.TOOL_CALL_ID) or "",
            content=_text(a, sc.TOOL_RESULT) or "",
            timestamp=iso_from_ns(event.timestamp),
            audioOffsetMs=_int(a, sc.AUDIO_OFFSET_MS),
        )
    else:
        return None
    return entry


def end_record(call_id: str, attrs: Attrs) -> dict[str, Any]:
    """Raises ValueError (pydantic's too) for counts or a format out of range: a rejection."""
    spoke_first = attrs.get(sc.CALL_AGENT_SPOKE_FIRST)
    return build_end(
        call_id,
        ended_at=_str(attrs, sc.CALL_ENDED_AT),
        started_at=_str(attrs, sc.CALL_STARTED_AT),
        reason=_str(attrs, sc.CALL_ENDED_REASON) or "unknown",
        spoke_first=spoke_first if isinstance(spoke_first, bool) else None,
        sample_rate=_int(attrs, sc.RECORDING_SAMPLE_RATE),
        channels=_int(attrs, sc.RECORDING_CHANNELS),
        segments=_int(attrs, sc.CALL_SEGMENT_COUNT) or 0,
        chunks=_int(attrs, sc.RECORDING_CHUNKS) or 0,
        started=sc.CALL_STARTED_AT in attrs,
    ).model_dump()


def build_end(
    call_id: str,
    *,
    ended_at: str | None,
    started_at: str | None,
    reason: str,
    segments: int,
    chunks: int,
    started: bool = True,
    spoke_first: bool | None = None,
    sample_rate: int | None = None,
    channels: int | None = None,
    event_at: str | None = None,
) -> EndRecord:
    """Every end record, the orphaned ones too: the same models, the same bounds."""
    payload = CallEnded(
        pipecatCallId=call_id,
        eventTimestamp=event_at or ended_at or "",
        callStartedAt=started_at,
        callEndedAt=ended_at,
        callEndedReason=reason,
        agentSpokeFirst=spoke_first,
        # Contract: recording fields only when chunks were uploaded.
        recordingSampleRate=sample_rate if chunks else None,
        recordingNumChannels=channels if chunks else None,
    ).wire()
    return EndRecord(segments=segments, chunks=chunks, started=started, payload=payload)


def _text(attrs: Attrs, key: str) -> str | None:
    """A string the writer may have split over continuation keys (``semconv.part_key``)."""
    first = _str(attrs, key)
    if first is None:
        return None
    parts = [first]
    while (part := _str(attrs, sc.part_key(key, len(parts)))) is not None:
        parts.append(part)
    return "".join(parts)


def _str(attrs: Attrs, key: str) -> str | None:
    value = attrs.get(key)
    return value if isinstance(value, str) else None


def _int(attrs: Attrs, key: str) -> int | None:
    value = attrs.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
