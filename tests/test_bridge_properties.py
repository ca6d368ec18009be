"""Property: whatever valid OTLP protobuf carries, the decoder answers bounded, in bounded memory.

Valid encodings with adversarial values (any int64, any uint64 time, any string, any
bytes); whatever the decoder accepts, translation handles without sizing anything by it.
"""

from __future__ import annotations

import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from pipecat_roark_otel import semconv as sc
from pipecat_roark_otel.bridge import decode_logs, decode_traces
from pipecat_roark_otel.bridge._decode import (
    MAX_CHANNELS,
    MAX_CHUNKS,
    MAX_SAMPLE_RATE,
    MAX_SEGMENTS,
    MAX_TIME_NS,
)
from pipecat_roark_otel.exporter._translate import translate

from . import otlp_build as ob

INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)
EDGES = st.sampled_from([0, -1, 1, 2**31, 2**53 + 1, 2**62, 2**63 - 1, -(2**63)])
INTS = st.one_of(EDGES, INT64, st.integers(0, 70_000))
VALUES = st.one_of(INTS, st.booleans(), st.floats(), st.text(max_size=40), st.binary(max_size=40))
KEYS = st.sampled_from(
    [
        sc.CALL_SEGMENT_COUNT,
        sc.RECORDING_CHUNKS,
        sc.RECORDING_SAMPLE_RATE,
        sc.RECORDING_CHANNELS,
        sc.SEGMENT_INDEX,
        sc.EVENT_SEQ,
        sc.AUDIO_OFFSET_MS,
        sc.CALL_STARTED_AT,
        sc.CALL_ENDED_AT,
        sc.AGENT_ID,
        sc.TURN_CONTENT,
        sc.RECORDING_CHUNK_INDEX,
        "anything.else",
    ]
)
ATTRS = st.dictionaries(KEYS, VALUES, max_size=8)
CALL_IDS = st.one_of(st.text(min_size=1, max_size=20), st.text(min_size=500, max_size=600))
EVENTS = st.lists(
    st.tuples(st.sampled_from([sc.EVENT_TURN, sc.EVENT_TOOL_CALL, "x"]), UINT64, ATTRS),
    max_size=4,
)


@st.composite
def trace_requests(draw: st.DrawFn) -> bytes:
    spans = []
    for _ in range(draw(st.integers(1, 4))):
        attrs = {sc.CONVERSATION_ID: draw(CALL_IDS), **draw(ATTRS)}
        spans.append(
            ob.span(
                draw(st.sampled_from([*sc.SPAN_NAMES, "other"])),
                attrs,
                start=draw(UINT64),
                end=draw(UINT64),
                events=draw(EVENTS),
            )
        )
    return ob.traces(*spans).SerializeToString()


@st.composite
def log_requests(draw: st.DrawFn) -> bytes:
    records = [
        ob.chunk_record(
            draw(CALL_IDS),
            draw(INTS),
            draw(st.binary(max_size=64)),
            sample_rate=draw(INTS),
            channels=draw(INTS),
        )
        for _ in range(draw(st.integers(1, 4)))
    ]
    return ob.logs(*records).SerializeToString()


def _peak_bytes(fn: object) -> int:
    assert callable(fn)
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trace_requests())
def test_any_trace_request_decodes_bounded(body: bytes) -> None:
    def work() -> None:
        decoded = decode_traces(ExportTraceServiceRequest.FromString(body))
        for span in decoded.spans:
            attrs = span.attributes or {}
            assert 0 <= (span.start_time or 0) <= MAX_TIME_NS
            if span.name == sc.SPAN_CALL:
                assert 0 <= int(attrs.get(sc.CALL_SEGMENT_COUNT, 0)) <= MAX_SEGMENTS
                assert 0 <= int(attrs.get(sc.RECORDING_CHUNKS, 0)) <= MAX_CHUNKS
            try:
                item = translate(span)
            except ValueError:
                continue  # a contract field refused: counted as one rejected span
            if item is not None and item.kind == "end":
                assert 0 <= item.body["segments"] <= MAX_SEGMENTS
                assert 0 <= item.body["chunks"] <= MAX_CHUNKS
            if item is not None and item.kind == "segment":
                assert 0 <= item.index < MAX_SEGMENTS

    assert _peak_bytes(work) < 8 * 1024 * 1024


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log_requests())
def test_any_log_request_decodes_bounded(body: bytes) -> None:
    decoded = decode_logs(ExportLogsServiceRequest.FromString(body))
    for chunk in decoded.chunks:
        assert 0 <= chunk.index < MAX_CHUNKS
        assert 1 <= chunk.num_channels <= MAX_CHANNELS
        assert 1_000 <= chunk.sample_rate <= MAX_SAMPLE_RATE
        assert chunk.pcm
    assert len(decoded.chunks) + decoded.rejected_count == len(
        ExportLogsServiceRequest.FromString(body).resource_logs[0].scope_logs[0].log_records
    )


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_either_fail_to_parse_or_decode_bounded(body: bytes) -> None:
    try:
        request = ExportTraceServiceRequest.FromString(body)
    except Exception:
        return  # the receivers answer 400 to a DecodeError
    decode_traces(request)
