"""The call as OTel: a start span, the call span, and segment spans that carry the events."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from opentelemetry.context import Context
from opentelemetry.sdk.trace import SpanLimits
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context
from opentelemetry.util.types import AttributeValue

from . import semconv as sc
from ._capture import Record, ToolCall, ToolResult, Turn

# Below the SDK's default of 128 events per span, which drops the overflow silently.
_MAX_SEGMENT_EVENTS = 64

# The most attributes one of our spans / events carries with no value-length limit,
# the user's custom call attributes aside (tests/test_otel_config.py holds calls to them).
MAX_SPAN_ATTRIBUTES: Final = 15
MAX_EVENT_ATTRIBUTES: Final = 16


def segment_capacity(limits: SpanLimits) -> int:
    """Events per segment span, within the provider's ``max_events``."""
    if limits.max_events is None:
        return _MAX_SEGMENT_EVENTS
    return max(1, min(_MAX_SEGMENT_EVENTS, limits.max_events))


def _put_text(attrs: dict[str, AttributeValue], key: str, value: str, limit: int | None) -> None:
    """Split a long string over continuation keys rather than let the SDK truncate it."""
    if limit is None or limit <= 0 or len(value) <= limit:
        attrs[key] = value
        return
    attrs[key] = value[:limit]
    for index, start in enumerate(range(limit, len(value), limit), start=1):
        attrs[sc.part_key(key, index)] = value[start : start + limit]


def record_event(
    record: Record, limit: int | None = None
) -> tuple[str, dict[str, AttributeValue], int]:
    """A record as (event name, attributes, timestamp ns); ``_translate`` reads it back."""
    attrs: dict[str, AttributeValue] = {sc.EVENT_SEQ: record.seq}
    if isinstance(record, Turn):
        attrs[sc.TURN_ROLE] = record.role
        _put_text(attrs, sc.TURN_CONTENT, record.content, limit)
        attrs[sc.TIMESTAMP] = record.timestamp
        attrs[sc.TURN_END_TIMESTAMP] = record.end_timestamp
        attrs[sc.TURN_INTERRUPTED] = record.interrupted
        _put(attrs, sc.AUDIO_OFFSET_MS, record.audio_offset_ms)
        _put(attrs, sc.TURN_END_AUDIO_OFFSET_MS, record.end_audio_offset_ms)
        _put(attrs, sc.TURN_USER_ID, record.user_id)
        _put(attrs, sc.TURN_LANGUAGE, record.language)
        _put(attrs, sc.TURN_LATENCY_MS, record.latency_ms)
        _put(attrs, sc.TURN_STT_TTFB_MS, record.stt_ttfb_ms)
        _put(attrs, sc.TURN_LLM_TTFB_MS, record.llm_ttfb_ms)
        _put(attrs, sc.TURN_TTS_TTFB_MS, record.tts_ttfb_ms)
        _put(attrs, sc.USAGE_INPUT_TOKENS, record.input_tokens)
        _put(attrs, sc.USAGE_OUTPUT_TOKENS, record.output_tokens)
        return sc.EVENT_TURN, attrs, record.onset_ns
    _put_text(attrs, sc.TOOL_CALL_ID, record.tool_call_id, limit)
    _put(attrs, sc.AUDIO_OFFSET_MS, record.audio_offset_ms)
    if isinstance(record, ToolCall):
        attrs[sc.TOOL_NAME] = record.name
        _put_text(attrs, sc.TOOL_ARGUMENTS, record.arguments, limit)
        return sc.EVENT_TOOL_CALL, attrs, record.at_ns
    assert isinstance(record, ToolResult)
    _put_text(attrs, sc.TOOL_RESULT, record.content, limit)
    return sc.EVENT_TOOL_RESULT, attrs, record.at_ns


def _put(attrs: dict[str, AttributeValue], key: str, value: AttributeValue | None) -> None:
    if value is not None:
        attrs[key] = value


@dataclass(frozen=True, slots=True)
class CallIdentity:
    conversation_id: str
    agent_id: str
    agent_name: str | None
    agent_prompt: str | None

    def id_attributes(self, limit: int | None) -> dict[str, AttributeValue]:
        """Identifiers are split like long texts: Roark reads them back whole."""
        attrs: dict[str, AttributeValue] = {}
        _put_text(attrs, sc.CONVERSATION_ID, self.conversation_id, limit)
        attrs[sc.GEN_AI_CONVERSATION_ID] = self.conversation_id
        return attrs

    def start_attributes(
        self, started_at: str | None, limit: int | None
    ) -> dict[str, AttributeValue]:
        attrs = self.id_attributes(limit)
        _put_text(attrs, sc.AGENT_ID, self.agent_id, limit)
        _put(attrs, sc.CALL_STARTED_AT, started_at)
        return attrs


def start_call_span(
    tracer: Tracer,
    identity: CallIdentity,
    *,
    parent: Context | None,
    start_ns: int,
    started_at: str | None,
    limits: SpanLimits,
    custom: Mapping[str, AttributeValue] | None = None,
) -> Span:
    """The ``roark.call`` span alone: its sampling decision is known before the rest is written.

    The user's ``custom`` attributes go first: under a count limit the SDK drops the oldest.
    """
    ours = identity.start_attributes(started_at, limits.max_span_attribute_length)
    return tracer.start_span(
        sc.SPAN_CALL,
        context=parent,
        kind=SpanKind.INTERNAL,
        attributes={**(custom or {}), **ours},
        start_time=start_ns,
    )


class CallRecord:
    """Writes one call. Segments end as they fill so a long call flows out progressively."""

    def __init__(
        self,
        tracer: Tracer,
        identity: CallIdentity,
        *,
        parent: Context | None = None,
        start_ns: int,
        started_at: str | None,
        limits: SpanLimits | None = None,
        call_span: Span | None = None,
        custom: Mapping[str, AttributeValue] | None = None,
    ) -> None:
        """``started_at`` is None for a call that ended before it started: no call-started.

        ``limits`` are the provider's (default: the ``OTEL_*`` ones); ``call_span``, if
        given, was started by ``start_call_span`` on the same provider. ``custom``: the
        user's own attributes for the call span (validated, never ours).
        """
        limits = limits or SpanLimits()
        self._tracer = tracer
        self._identity = identity
        self._capacity = segment_capacity(limits)
        self._limit = limits.max_attribute_length
        self._span_limit = limits.max_span_attribute_length
        self._closed = False
        self.call_span = call_span or start_call_span(
            tracer,
            identity,
            parent=parent,
            start_ns=start_ns,
            started_at=started_at,
            limits=limits,
            custom=custom,
        )
        self._call_ctx = set_span_in_context(self.call_span)
        if started_at is not None:
            start_attrs = identity.start_attributes(started_at, self._span_limit)
            _put(start_attrs, sc.AGENT_NAME, identity.agent_name or None)
            if identity.agent_prompt:
                _put_text(start_attrs, sc.AGENT_PROMPT, identity.agent_prompt, self._span_limit)
            self.call_span.add_event(sc.EVENT_CALL_STARTED, timestamp=start_ns)
            # Ended at once: call-started must not wait for the call to end.
            tracer.start_span(
                sc.SPAN_CALL_START,
                context=self._call_ctx,
                attributes=start_attrs,
                start_time=start_ns,
            ).end(end_time=start_ns)
        self._segment: Span | None = None
        # Tool spans still running, by tool call id (oldest first: ids may be empty).
        self._tools: dict[str, list[tuple[Span, int]]] = {}
        self._segment_events = 0
        self.segments = 0
        self.turns = 0
        self.tool_events = 0

    @property
    def trace_id(self) -> str | None:
        context = self.call_span.get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else None

    def add(self, records: list[Record]) -> None:
        for record in records:
            if isinstance(record, ToolResult) and not record.reported:
                self._tool_span(record)  # for the trace only: Roark has this call's result
                continue
            name, attrs, ts = record_event(record, self._limit)
            if self._segment is None:
                self._segment = self._tracer.start_span(
                    sc.SPAN_CALL_SEGMENT,
                    context=self._call_ctx,
                    attributes={
                        **self._identity.id_attributes(self._span_limit),
                        sc.SEGMENT_INDEX: self.segments,
                    },
                    start_time=ts,
                )
                self.segments += 1
                self._segment_events = 0
            self._segment.add_event(name, attrs, timestamp=ts)
            self._segment_events += 1
            if isinstance(record, Turn):
                self.turns += 1
            else:
                self.tool_events += 1
                self._tool_span(record)
            if self._segment_events >= self._capacity:
                self._end_segment()

    def _tool_span(self, record: ToolCall | ToolResult) -> None:
        """An ``execute_tool`` span from a tool's invocation to its result (GenAI conventions)."""
        if isinstance(record, ToolCall):
            attrs: dict[str, AttributeValue] = {
                **self._identity.id_attributes(self._span_limit),
                sc.GEN_AI_OPERATION_NAME: sc.SPAN_EXECUTE_TOOL,
                sc.TOOL_NAME: record.name,
                sc.TOOL_CALL_ID: record.tool_call_id,
                sc.TOOL_TYPE: "function",
            }
            _put_text(attrs, sc.TOOL_ARGUMENTS, record.arguments, self._limit)
            span = self._tracer.start_span(
                f"{sc.SPAN_EXECUTE_TOOL} {record.name}".rstrip(),
                context=self._call_ctx,
                kind=SpanKind.INTERNAL,
                attributes=attrs,
                start_time=record.at_ns,
            )
            self._tools.setdefault(record.tool_call_id, []).append((span, record.at_ns))
            return
        result: dict[str, AttributeValue] = {}
        _put_text(result, sc.TOOL_RESULT, record.content, self._limit)
        if not record.final:
            # A progress update: the tool keeps running, its latest result on the span.
            for span, _ in self._tools.get(record.tool_call_id, [])[:1]:
                span.set_attributes(result)
            return
        failure = ("tool_error", "the tool handler raised") if record.failed else None
        self._end_tool(record.tool_call_id, record.at_ns, result, failure)

    def _end_tool(
        self,
        tool_call_id: str,
        at_ns: int,
        attributes: Mapping[str, AttributeValue],
        failure: tuple[str, str] | None,
    ) -> None:
        running = self._tools.get(tool_call_id)
        if not running:
            return  # a result with no invocation seen: nothing ran that we can time
        span, start_ns = running.pop(0)
        span.set_attributes(attributes)
        if failure is not None:
            error_type, description = failure
            span.set_attribute(sc.ERROR_TYPE, error_type)
            span.set_status(Status(StatusCode.ERROR, description))
        span.end(end_time=max(at_ns, start_ns))

    def cancel_tool(self, tool_call_id: str, at_ns: int) -> None:
        """Pipecat cancelled the call (interruption, timeout): its span ends as an error."""
        self._end_tool(tool_call_id, at_ns, {}, ("cancelled", "the tool call was cancelled"))

    def _end_segment(self) -> None:
        if self._segment is not None:
            self._segment.end()
            self._segment = None

    def set_custom(self, attributes: Mapping[str, AttributeValue]) -> bool:
        """The user's attributes on the call span; False once the call has ended."""
        if self._closed:
            return False
        self.call_span.set_attributes(attributes)
        return True

    def close(self, attributes: Mapping[str, AttributeValue], *, end_ns: int) -> None:
        """End the call: the last segment first, so the exporter has every event it counts."""
        for tool_call_id in list(self._tools):
            while self._tools[tool_call_id]:
                failure = ("call_ended", "the call ended before the tool returned")
                self._end_tool(tool_call_id, end_ns, {}, failure)
        self._end_segment()
        self.call_span.set_attributes(
            {
                **attributes,
                sc.CALL_SEGMENT_COUNT: self.segments,
                sc.CALL_TURN_COUNT: self.turns,
                sc.CALL_TOOL_EVENT_COUNT: self.tool_events,
            }
        )
        self.call_span.add_event(sc.EVENT_CALL_ENDED, timestamp=end_ns)
        self._closed = True
        self.call_span.end(end_time=end_ns)
