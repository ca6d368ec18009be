"""RoarkSpanExporter: our spans in any order, twice, under either processor; others skipped."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipecat_roark_otel import semconv as sc
from pipecat_roark_otel._capture import ToolCall, ToolResult, Turn, iso_from_ns
from pipecat_roark_otel._record import CallIdentity, CallRecord
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter

T0 = 1_795_000_000_000_000_000


def _turn(seq: int, role: str = "user") -> Turn:
    t = T0 + seq * 1_000_000_000
    return Turn(
        seq=seq,
        role=role,  # type: ignore[arg-type]
        content=f"turn {seq} héllo ✓",
        onset_ns=t,
        timestamp=iso_from_ns(t),
        end_timestamp=iso_from_ns(t + 500_000_000),
        audio_offset_ms=seq * 1000,
        end_audio_offset_ms=seq * 1000 + 500,
    )


def _call_spans(call_id: str, *, turns: int, tools: int) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    record = CallRecord(
        provider.get_tracer(sc.INSTRUMENTATION_SCOPE),
        CallIdentity(call_id, "agent-1", "Agent", None),
        parent=None,
        start_ns=T0,
        started_at=iso_from_ns(T0),
    )
    seq = 0
    for i in range(turns):
        seq += 1
        record.add([_turn(seq, "user" if i % 2 else "assistant")])
        if i < tools:
            t = T0 + seq * 1_000_000_000 + 1
            record.add(
                [
                    ToolCall(seq + 1, f"tc{i}", "lookup", f'{{"i":{i}}}', t, None),
                    ToolResult(seq + 2, f"tc{i}", f"ok {i}", t + 1, None),
                ]
            )
            seq += 2
    record.close(
        {sc.CALL_ENDED_REASON: "agent-ended", sc.CALL_ENDED_AT: iso_from_ns(T0 + 10**13)},
        end_ns=T0 + 10**13,
    )
    provider.shutdown()
    return list(memory.get_finished_spans())


@pytest.fixture
def roark_exporter(roark: LocalRoark, tmp_path: Path) -> RoarkSpanExporter:
    exp = RoarkSpanExporter(api_key=roark.api_key, base_url=roark.base_url, spool_dir=tmp_path)
    yield exp
    exp.shutdown()


def test_spans_in_any_order_and_twice(roark: LocalRoark, roark_exporter: RoarkSpanExporter) -> None:
    spans = _call_spans("shuffled", turns=300, tools=40)
    assert len([s for s in spans if s.name == sc.SPAN_CALL_SEGMENT]) > 3
    order = spans + spans[:5]
    random.Random(7).shuffle(order)
    # The call span first: call-ended must still wait for every segment.
    order.sort(key=lambda s: s.name != sc.SPAN_CALL)
    for span in order:
        assert roark_exporter.export([span]) is SpanExportResult.SUCCESS
    assert roark_exporter.force_flush(20_000)
    ended = roark.wait_for_call_ended("shuffled")["ended"]
    assert [t["content"] for t in ended["transcript"]] == [
        t["content"] for t in sorted(ended["transcript"], key=lambda t: t["timestamp"])
    ]
    assert len(ended["transcript"]) == 300
    assert len(ended["toolCalls"]) == 80
    posts = [r for r in roark.requests("shuffled") if r.get("event") and r["status"] < 300]
    assert [r["event"] for r in posts] == ["call-started", "call-ended"]


def test_long_call_is_complete_under_default_span_limits(
    roark: LocalRoark, roark_exporter: RoarkSpanExporter
) -> None:
    """2,000 turns and 500 tool calls: the SDK's 128 events per span drops nothing."""
    spans = _call_spans("long-call", turns=2000, tools=500)
    assert all(len(s.events) <= 128 and s.dropped_events == 0 for s in spans)
    roark_exporter.export(spans)
    assert roark_exporter.force_flush(30_000)
    ended = roark.wait_for_call_ended("long-call", timeout=30)["ended"]
    assert len(ended["transcript"]) == 2000
    assert len(ended["toolCalls"]) == 1000
    assert ended["toolCalls"][0] == {
        "kind": "tool_call",
        "toolCallId": "tc0",
        "name": "lookup",
        "arguments": '{"i":0}',
        "timestamp": iso_from_ns(T0 + 1_000_000_001),
    }


@pytest.mark.parametrize("processor", [SimpleSpanProcessor, BatchSpanProcessor])
def test_under_simple_and_batch_processors(
    processor: type, roark: LocalRoark, roark_exporter: RoarkSpanExporter
) -> None:
    provider = TracerProvider()
    provider.add_span_processor(processor(roark_exporter))
    tracer = provider.get_tracer("someone-else")
    with tracer.start_as_current_span("unrelated", attributes={"conversation.id": "x"}):
        pass
    record = CallRecord(
        provider.get_tracer(sc.INSTRUMENTATION_SCOPE),
        CallIdentity(f"proc-{processor.__name__}", "a", None, None),
        parent=None,
        start_ns=T0,
        started_at=iso_from_ns(T0),
    )
    record.add([_turn(1)])
    record.close(
        {sc.CALL_ENDED_REASON: "done", sc.CALL_ENDED_AT: iso_from_ns(T0 + 1)}, end_ns=T0 + 1
    )
    provider.force_flush()
    assert roark_exporter.force_flush(10_000)
    call = roark.wait_for_call_ended(f"proc-{processor.__name__}")
    assert call["ended"]["transcript"][0]["content"] == "turn 1 héllo ✓"
    # The unrelated span never became a call.
    assert [c["pipecatCallId"] for c in roark.calls()] == [f"proc-{processor.__name__}"]
    provider.shutdown()


def test_foreign_spans_cost_one_check(tmp_path: Path) -> None:
    exp = RoarkSpanExporter(api_key="k", base_url="http://127.0.0.1:9", spool_dir=tmp_path)
    try:
        provider = TracerProvider()
        memory = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(memory))
        with provider.get_tracer("pipecat").start_as_current_span("tts"):
            pass
        assert exp.export(memory.get_finished_spans()) is SpanExportResult.SUCCESS
        assert (
            not any((tmp_path / "v1" / "calls").glob("*")) if (tmp_path / "v1").exists() else True
        )
    finally:
        exp.shutdown()


def test_content_filter_strips_pipecat_service_spans_too() -> None:
    from pipecat_roark_otel.exporter import ContentFilteringSpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ContentFilteringSpanExporter(memory)))
    attrs = {"transcript": "my card is 4242", "input": "[...]", "metrics.ttfb": 0.2}
    with provider.get_tracer("pipecat").start_as_current_span("stt", attributes=attrs):
        pass
    with provider.get_tracer("someone.else").start_as_current_span("x", attributes=attrs):
        pass
    stt, other = memory.get_finished_spans()
    assert dict(stt.attributes or {}) == {"metrics.ttfb": 0.2}
    assert dict(other.attributes or {}) == attrs  # not Pipecat's, not ours: untouched


def test_long_text_survives_an_attribute_length_limit(
    monkeypatch: pytest.MonkeyPatch, roark: LocalRoark, roark_exporter: RoarkSpanExporter
) -> None:
    """OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT would cut the transcript: split it, rejoin it."""
    from pipecat_roark_otel.exporter import ContentFilteringSpanExporter

    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "40")
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(SimpleSpanProcessor(roark_exporter))
    filtered = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(ContentFilteringSpanExporter(filtered)))
    long_text = "All the words the caller said, well past forty characters. " * 5
    prompt = "A system prompt well longer than forty characters."
    record = CallRecord(
        provider.get_tracer(sc.INSTRUMENTATION_SCOPE),
        CallIdentity("long-values", "a", None, prompt),
        parent=None,
        start_ns=T0,
        started_at=iso_from_ns(T0),
    )
    turn = _turn(1)
    record.add([Turn(**{**{f: getattr(turn, f) for f in turn.__slots__}, "content": long_text})])
    record.add([ToolResult(2, "tc", long_text, T0 + 2, None)])
    record.close(
        {sc.CALL_ENDED_REASON: "done", sc.CALL_ENDED_AT: iso_from_ns(T0 + 3)}, end_ns=T0 + 3
    )
    assert roark_exporter.force_flush(10_000)
    call = roark.wait_for_call_ended("long-values")
    assert call["started"]["agentPrompt"] == prompt
    assert call["ended"]["transcript"][0]["content"] == long_text
    assert call["ended"]["toolCalls"][0]["content"] == long_text
    # Every attribute the SDK kept is within the limit, and no part leaks past the filter.
    for span in memory.get_finished_spans():
        for event in span.events:
            assert all(len(v) <= 40 for v in event.attributes.values() if isinstance(v, str))
    for span in filtered.get_finished_spans():
        for event in span.events:
            assert not any(k.startswith(sc.TURN_CONTENT) for k in event.attributes)
    provider.shutdown()
