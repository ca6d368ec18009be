"""One ``execute_tool`` span per executed tool call, under the call; Roark's payload unchanged."""

from __future__ import annotations

from datetime import datetime

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from pipecat_roark_otel import RoarkObserver
from pipecat_roark_otel import semconv as sc
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import ContentFilteringSpanExporter, RoarkSpanExporter
from pipecat_roark_otel.exporter._translate import is_ours, translate
from pipecat_roark_otel.simulation import Exchange, Script, Tool, run_simulated_call

from .conftest import Otel

pytestmark = pytest.mark.e2e

TOOLS = Script(
    exchanges=(
        Exchange(
            user="Where is my order",
            bot="It shipped.",
            tool=Tool("lookup_order", {"order_id": "A-1042"}, {"status": "shipped"}, "ok_1"),
        ),
        Exchange(
            user="Refund it",
            bot="That did not work.",
            tool=Tool("refund", {"order_id": "A-1042"}, "refund failed", "err_1", "error"),
        ),
        Exchange(
            user="Transfer me",
            bot="Never mind.",
            tool=Tool("transfer", {"to": "sales"}, None, "cancel_1", "cancelled"),
        ),
        Exchange(
            user="Check my refund",
            bot="It is on its way.",
            tool=Tool(
                "refund_status", {"order_id": "A-1042"}, {"refund": "sent"}, "slow_1", "progress"
            ),
        ),
        Exchange(
            user="Book a callback",
            bot="Booking it now.",
            tool=Tool("book_callback", {"at": "noon"}, None, "hang_1", "hangs"),
        ),
    ),
    speed=16.0,
)


def _tool_spans(spans: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    tools = [
        s for s in spans if (s.attributes or {}).get(sc.GEN_AI_OPERATION_NAME) == "execute_tool"
    ]
    return {str((s.attributes or {})[sc.TOOL_CALL_ID]): s for s in tools}


def _unix_ns(iso: str) -> int:
    return round(datetime.fromisoformat(iso).timestamp() * 1_000_000) * 1_000


async def _call(
    exporter: RoarkSpanExporter, roark: LocalRoark, observer: RoarkObserver, script: Script
) -> dict:
    await run_simulated_call(observer, script=script)
    assert exporter.force_flush(15_000)
    ended: dict = roark.wait_for_call_ended(observer.conversation_id, timeout=15)["ended"]
    return ended


async def test_each_tool_call_is_a_span_under_the_call_from_invocation_to_result(
    exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    observer = RoarkObserver(agent_id="tools")
    ended = await _call(exporter, roark, observer, TOOLS)

    spans = otel.spans()
    call_span = next(s for s in spans if s.name == sc.SPAN_CALL)
    tools = _tool_spans(spans)
    assert set(tools) == {"ok_1", "err_1", "cancel_1", "slow_1", "hang_1"}
    for call_id, span in tools.items():
        attrs = span.attributes or {}
        name = str(attrs[sc.TOOL_NAME])
        assert span.name == f"execute_tool {name}"
        assert attrs[sc.TOOL_TYPE] == "function"
        assert attrs[sc.CONVERSATION_ID] == observer.conversation_id
        assert span.parent is not None and span.parent.span_id == call_span.context.span_id
        assert span.context.trace_id == call_span.context.trace_id
        assert span.start_time is not None and span.end_time is not None
        assert call_span.start_time <= span.start_time <= span.end_time <= call_span.end_time
        # Roark's exporter leaves them alone: they carry no part of its payload.
        assert not is_ours(span) and translate(span) is None, call_id

    # Timed from invocation to result, the same instants Roark's records carry.
    records = {(r["kind"], r["toolCallId"]): r for r in ended["toolCalls"]}
    ok = tools["ok_1"]
    assert ok.status.status_code == StatusCode.UNSET
    assert ok.start_time // 1000 * 1000 == _unix_ns(records["tool_call", "ok_1"]["timestamp"])
    assert ok.end_time // 1000 * 1000 == _unix_ns(records["tool_result", "ok_1"]["timestamp"])
    assert (ok.attributes or {})[sc.TOOL_ARGUMENTS] == '{"order_id":"A-1042"}'
    assert (ok.attributes or {})[sc.TOOL_RESULT] == '{"status":"shipped"}'

    failures = {
        call_id: ((tools[call_id].attributes or {}).get(sc.ERROR_TYPE), tools[call_id].status)
        for call_id in ("err_1", "cancel_1", "hang_1")
    }
    assert {k: (t, s.status_code) for k, (t, s) in failures.items()} == {
        "err_1": ("tool_error", StatusCode.ERROR),
        "cancel_1": ("cancelled", StatusCode.ERROR),
        "hang_1": ("call_ended", StatusCode.ERROR),
    }
    # An async tool's progress update leaves it running: its span ends at the final result,
    # while Roark keeps the one result per call id it always had (the first).
    slow = tools["slow_1"]
    assert slow.status.status_code == StatusCode.UNSET
    assert (slow.attributes or {})[sc.TOOL_RESULT] == '{"refund":"sent"}'
    assert records["tool_result", "slow_1"]["content"] == '{"progress":"working"}'
    assert slow.end_time // 1000 * 1000 > _unix_ns(records["tool_result", "slow_1"]["timestamp"])

    # The tool that never returned runs until the call ends.
    assert tools["hang_1"].end_time == call_span.end_time
    assert tools["cancel_1"].end_time < tools["hang_1"].start_time

    # Roark's payload is what it was: invocations and the results that came back.
    assert [(r["kind"], r["toolCallId"]) for r in ended["toolCalls"]] == [
        ("tool_call", "ok_1"),
        ("tool_result", "ok_1"),
        ("tool_call", "err_1"),
        ("tool_result", "err_1"),
        ("tool_call", "cancel_1"),
        ("tool_call", "slow_1"),
        ("tool_result", "slow_1"),
        ("tool_call", "hang_1"),
    ]
    assert records["tool_result", "err_1"]["content"] == "refund failed"


ONE_TOOL = Script(exchanges=TOOLS.exchanges[:1], speed=16.0)


async def test_tool_spans_obey_redaction_and_the_content_filter(
    exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    backend = InMemorySpanExporter()
    otel.add(SimpleSpanProcessor(ContentFilteringSpanExporter(backend)))
    observer = RoarkObserver(agent_id="tools", redact=lambda text: text.replace("A-1042", "A-####"))
    ended = await _call(exporter, roark, observer, ONE_TOOL)
    assert ended["toolCalls"][0]["arguments"] == '{"order_id":"A-####"}'

    [redacted] = _tool_spans(otel.spans()).values()
    assert (redacted.attributes or {})[sc.TOOL_ARGUMENTS] == '{"order_id":"A-####"}'

    [filtered] = _tool_spans(list(backend.get_finished_spans())).values()
    attrs = filtered.attributes or {}
    assert sc.TOOL_ARGUMENTS not in attrs and sc.TOOL_RESULT not in attrs
    assert attrs[sc.TOOL_NAME] == "lookup_order" and attrs[sc.TOOL_CALL_ID] == "ok_1"


async def test_long_tool_payloads_are_split_not_cut_on_the_span(
    exporter: RoarkSpanExporter,
    roark: LocalRoark,
    otel: Otel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "16")
    # The SDK reads its limits when a provider is made: the user's provider, made now.
    provider = TracerProvider()
    backend = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(backend))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    long = {"note": "x" * 100}
    script = Script(
        exchanges=(Exchange(user="Hi", bot="Done.", tool=Tool("note", long, long, "long_1")),),
        speed=16.0,
    )
    observer = RoarkObserver(agent_id="tools", tracer_provider=provider)
    ended = await _call(exporter, roark, observer, script)
    [span] = _tool_spans(list(backend.get_finished_spans())).values()
    attrs = span.attributes or {}
    parts = [str(attrs[sc.TOOL_ARGUMENTS])]
    while (part := attrs.get(sc.part_key(sc.TOOL_ARGUMENTS, len(parts)))) is not None:
        parts.append(str(part))
    assert max(len(p) for p in parts) <= 16
    assert "".join(parts) == ended["toolCalls"][0]["arguments"] == '{"note":"' + "x" * 100 + '"}'
