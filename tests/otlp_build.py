"""Hand-built OTLP requests: our spans and chunk log records with any values, good or hostile."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from pipecat_roark_otel import semconv as sc

Value = str | bool | int | float | bytes
NOW_NS = 1_780_000_000_000_000_000


def any_value(value: Value) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    return AnyValue(string_value=value)


def kvs(attrs: Mapping[str, Value]) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in attrs.items()]


def span(
    name: str,
    attrs: Mapping[str, Value],
    *,
    trace_id: bytes | None = None,
    start: int = NOW_NS,
    end: int = NOW_NS + 1_000,
    events: Sequence[tuple[str, int, Mapping[str, Value]]] = (),
) -> Span:
    s = Span(
        name=name,
        trace_id=trace_id or os.urandom(16),
        span_id=os.urandom(8),
        start_time_unix_nano=start,
        end_time_unix_nano=end,
        attributes=kvs(attrs),
    )
    for event_name, t, event_attrs in events:
        s.events.add(name=event_name, time_unix_nano=t, attributes=kvs(event_attrs))
    return s


def traces(*spans: Span, scope: str = sc.INSTRUMENTATION_SCOPE) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                scope_spans=[ScopeSpans(scope=InstrumentationScope(name=scope), spans=spans)]
            )
        ]
    )


def started(call_id: str, **extra: Value) -> Span:
    attrs: dict[str, Value] = {
        sc.CONVERSATION_ID: call_id,
        sc.AGENT_ID: "hostile-agent",
        sc.CALL_STARTED_AT: "2026-06-01T10:00:00.000Z",
        **extra,
    }
    return span(sc.SPAN_CALL_START, attrs)


def call_end(call_id: str, **extra: Value) -> Span:
    attrs: dict[str, Value] = {
        sc.CONVERSATION_ID: call_id,
        sc.AGENT_ID: "hostile-agent",
        sc.CALL_STARTED_AT: "2026-06-01T10:00:00.000Z",
        sc.CALL_ENDED_AT: "2026-06-01T10:01:00.000Z",
        sc.CALL_ENDED_REASON: "agent-ended",
        sc.CALL_SEGMENT_COUNT: 0,
        **extra,
    }
    return span(sc.SPAN_CALL, attrs)


def chunk_record(
    call_id: str,
    index: int,
    pcm: bytes,
    *,
    sample_rate: int = 16_000,
    channels: int = 2,
    trace_id: bytes = b"",
) -> LogRecord:
    attrs: dict[str, Value] = {
        sc.CONVERSATION_ID: call_id,
        sc.RECORDING_CHUNK_INDEX: index,
        sc.RECORDING_SAMPLE_RATE: sample_rate,
        sc.RECORDING_CHANNELS: channels,
    }
    return LogRecord(
        time_unix_nano=NOW_NS,
        body=AnyValue(bytes_value=pcm),
        attributes=kvs(attrs),
        trace_id=trace_id,
    )


def logs(*records: LogRecord, scope: str = sc.INSTRUMENTATION_SCOPE) -> ExportLogsServiceRequest:
    return ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                scope_logs=[ScopeLogs(scope=InstrumentationScope(name=scope), log_records=records)]
            )
        ]
    )
