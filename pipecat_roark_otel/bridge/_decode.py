"""OTLP requests to our spans and recording chunks. Pure, and every number from the wire is
bounded before anything downstream sizes a range, a file or a date by it (issue 15)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, TraceFlags
from opentelemetry.util.types import AttributeValue

from .. import semconv as sc

# Far above any real call (a segment holds up to 64 events; a chunk is ~8 s of audio),
# far below anything that costs memory to range over.
MAX_SEGMENTS: Final = 100_000
MAX_CHUNKS: Final = 1_000_000
MAX_CHUNK_BYTES: Final = 16 * 1024 * 1024
MIN_SAMPLE_RATE: Final = 1_000
MAX_SAMPLE_RATE: Final = 384_000
MAX_CHANNELS: Final = 8
MAX_CALL_ID_CHARS: Final = 512
# Nanoseconds past 2**63 overflow the datetimes they become.
MAX_TIME_NS: Final = 2**63 - 1
# Integers end up in JSON; beyond 2**53 no JSON reader keeps them exact.
MAX_SAFE_INT: Final = 2**53

Attrs = dict[str, AttributeValue]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One recording chunk from a ``roark.recording.chunk`` log record."""

    call_id: str
    index: int
    pcm: bytes
    sample_rate: int
    num_channels: int


@dataclass(slots=True)
class Decoded:
    """Our records in one request, and the ones refused (by reason) with their count."""

    spans: list[ReadableSpan] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)

    @property
    def rejected_count(self) -> int:
        return sum(self.rejected.values())


def _value(any_value: AnyValue) -> AttributeValue | None:
    # Our records carry scalars only; anything else is not ours to read.
    kind = any_value.WhichOneof("value")
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        value: AttributeValue = getattr(any_value, kind)
        return value
    return None


def _attributes(kvs: Iterable[KeyValue]) -> Attrs:
    out: Attrs = {}
    for kv in kvs:
        value = _value(kv.value)
        if value is not None:
            out[kv.key] = value
    return out


def _int_problem(attrs: Attrs) -> str | None:
    for key, value in attrs.items():
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SAFE_INT:
            return f"{key} out of range"
    return None


def _in_range(attrs: Attrs, key: str, low: int, high: int, *, required: bool = False) -> bool:
    value = attrs.get(key)
    if value is None:
        return not required
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _checked_int(attrs: Attrs, key: str) -> int:
    value = attrs[key]
    return value if isinstance(value, int) else 0


def _call_id_problem(attrs: Attrs) -> str | None:
    call_id = attrs.get(sc.CONVERSATION_ID)
    if isinstance(call_id, str) and len(call_id) > MAX_CALL_ID_CHARS:
        return "call id too long"
    return None


def span_problem(name: str, attrs: Attrs, times: Iterable[int], events: list[Attrs]) -> str | None:
    """Why a span of ours is refused, or None. A reason is a short fixed phrase (it is counted)."""
    if any(t > MAX_TIME_NS for t in times):
        return "timestamp out of range"
    problem = _call_id_problem(attrs) or _int_problem(attrs)
    if problem:
        return problem
    for event_attrs in events:
        if problem := _int_problem(event_attrs):
            return problem
    if name == sc.SPAN_CALL:
        checks = (
            (sc.CALL_SEGMENT_COUNT, 0, MAX_SEGMENTS),
            (sc.RECORDING_CHUNKS, 0, MAX_CHUNKS),
            (sc.RECORDING_SAMPLE_RATE, MIN_SAMPLE_RATE, MAX_SAMPLE_RATE),
            (sc.RECORDING_CHANNELS, 1, MAX_CHANNELS),
        )
        for key, low, high in checks:
            if not _in_range(attrs, key, low, high):
                return f"{key} out of range"
    elif name == sc.SPAN_CALL_SEGMENT and not _in_range(
        attrs, sc.SEGMENT_INDEX, 0, MAX_SEGMENTS - 1
    ):
        return f"{sc.SEGMENT_INDEX} out of range"
    return None


def _readable(span: Span, scope: InstrumentationScope, attrs: Attrs) -> ReadableSpan:
    context = SpanContext(
        int.from_bytes(span.trace_id, "big"),
        int.from_bytes(span.span_id, "big"),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return ReadableSpan(
        name=span.name,
        context=context,
        attributes=attrs,
        events=[Event(e.name, _attributes(e.attributes), e.time_unix_nano) for e in span.events],
        start_time=span.start_time_unix_nano,
        end_time=span.end_time_unix_nano,
        instrumentation_scope=scope,
    )


def decode_traces(request: ExportTraceServiceRequest) -> Decoded:
    """Our spans, as the SDK would hand them to an exporter; other scopes are skipped."""
    out = Decoded()
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            if scope_spans.scope.name != sc.INSTRUMENTATION_SCOPE:
                continue
            # Scope attributes too: a backend copy (``roark.backend_copy``) is not delivered.
            scope = InstrumentationScope(
                scope_spans.scope.name,
                scope_spans.scope.version,
                attributes=_attributes(scope_spans.scope.attributes),
            )
            for span in scope_spans.spans:
                attrs = _attributes(span.attributes)
                times = [span.start_time_unix_nano, span.end_time_unix_nano]
                times.extend(e.time_unix_nano for e in span.events)
                events = [_attributes(e.attributes) for e in span.events]
                problem = span_problem(span.name, attrs, times, events)
                if problem is not None:
                    out.rejected[problem] += 1
                    continue
                out.spans.append(_readable(span, scope, attrs))
    return out


def chunk_problem(attrs: Attrs, body: Any) -> str | None:
    """Why a chunk record is refused, or None."""
    call_id = attrs.get(sc.CONVERSATION_ID)
    if not isinstance(call_id, str) or not call_id:
        return "chunk without call id"
    if problem := _call_id_problem(attrs):
        return problem
    if not isinstance(body, bytes) or not body:
        return "chunk without audio bytes"
    if len(body) > MAX_CHUNK_BYTES:
        return "chunk too large"
    checks = (
        (sc.RECORDING_CHUNK_INDEX, 0, MAX_CHUNKS - 1),
        (sc.RECORDING_SAMPLE_RATE, MIN_SAMPLE_RATE, MAX_SAMPLE_RATE),
        (sc.RECORDING_CHANNELS, 1, MAX_CHANNELS),
    )
    for key, low, high in checks:
        if not _in_range(attrs, key, low, high, required=True):
            return f"{key} out of range"
    return None


def decode_logs(request: ExportLogsServiceRequest) -> Decoded:
    """Recording chunks: log records of our scope that carry a chunk index."""
    out = Decoded()
    for resource_logs in request.resource_logs:
        for scope_logs in resource_logs.scope_logs:
            if scope_logs.scope.name != sc.INSTRUMENTATION_SCOPE:
                continue
            for record in scope_logs.log_records:
                attrs = _attributes(record.attributes)
                if sc.RECORDING_CHUNK_INDEX not in attrs:
                    continue
                body = record.body.bytes_value if record.body.HasField("bytes_value") else None
                problem = chunk_problem(attrs, body)
                if problem is not None:
                    out.rejected[problem] += 1
                    continue
                out.chunks.append(
                    Chunk(
                        call_id=str(attrs[sc.CONVERSATION_ID]),
                        index=_checked_int(attrs, sc.RECORDING_CHUNK_INDEX),
                        pcm=bytes(body or b""),
                        sample_rate=_checked_int(attrs, sc.RECORDING_SAMPLE_RATE),
                        num_channels=_checked_int(attrs, sc.RECORDING_CHANNELS),
                    )
                )
    return out
