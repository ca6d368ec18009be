"""Trace-backend extras of the record, on real Pipecat services (Deepgram, OpenAI, Cartesia)."""

from __future__ import annotations

from types import ModuleType

from opentelemetry.trace import StatusCode

from examples.offline.vendors import Vendors
from pipecat_roark_otel import semconv as sc
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter

from ..conftest import Otel
from .harness import ORDER, phone_call, read_call


async def test_latency_breakdown_and_tool_spans(
    bot: ModuleType, vendors: Vendors, exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    async with phone_call(bot.bot, vendors) as (caller, runs):
        await caller.wait_for_bot()
        await caller.say(ORDER)
        await caller.wait_for_bot()  # the answer, after a tool call
        await caller.hang_up()
        await runs.wait_finished()
    assert exporter.force_flush(15_000)
    await read_call(roark)

    events = sorted(
        (e for s in otel.spans() if s.name == sc.SPAN_CALL_SEGMENT for e in s.events),
        key=lambda e: e.timestamp,
    )
    turns = [dict(e.attributes or {}) for e in events if e.name == sc.EVENT_TURN]
    assert [t[sc.TURN_ROLE] for t in turns] == ["assistant", "user", "assistant"]
    greeting, _, reply = turns
    # The greeting answers no one: its LLM and TTS waited, no STT did.
    assert {sc.TURN_LLM_TTFB_MS, sc.TURN_TTS_TTFB_MS} <= set(greeting)
    assert sc.TURN_STT_TTFB_MS not in greeting
    for name in (sc.TURN_LLM_TTFB_MS, sc.TURN_TTS_TTFB_MS):
        assert 0 < reply[name] < 10_000, (name, reply)
    # Pipecat times the STT from the VAD's stop to the final; a final that beats the
    # VAD (a loaded machine) leaves no measurement, and none is made up.
    assert 0 < reply.get(sc.TURN_STT_TTFB_MS, 1) < 10_000, reply
    assert reply[sc.TURN_LATENCY_MS] > 0
    # Two requests (the tool call, then the answer), each with the stand-in's usage.
    assert (reply[sc.USAGE_INPUT_TOKENS], reply[sc.USAGE_OUTPUT_TOKENS]) == (100, 40)

    # Pipecat's own function calling ran the tool: one span under the call, invocation to result.
    spans = otel.spans()
    call_span = next(s for s in spans if s.name == sc.SPAN_CALL)
    [tool] = [s for s in spans if s.name.startswith(f"{sc.SPAN_EXECUTE_TOOL} ")]
    assert tool.name == "execute_tool lookup_order"
    assert tool.parent is not None and tool.parent.span_id == call_span.context.span_id
    assert tool.status.status_code == StatusCode.UNSET
    assert tool.start_time is not None and tool.end_time is not None
    assert tool.start_time < tool.end_time
    assert "shipped" in str((tool.attributes or {})[sc.TOOL_RESULT])
