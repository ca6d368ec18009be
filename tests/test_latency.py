"""Each reply's latency breakdown on its turn event, from Pipecat's own metrics frames."""

from __future__ import annotations

from typing import Any

import pytest

from pipecat_roark_otel import RoarkObserver
from pipecat_roark_otel import semconv as sc
from pipecat_roark_otel._capture import CallCapture, Turn
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter
from pipecat_roark_otel.simulation import (
    TOOL_CALL_TOKENS,
    Exchange,
    Script,
    Tool,
    run_simulated_call,
)

from .conftest import Otel
from .support.capture import run

SCRIPT = Script(
    greeting="Hello there, how can I help?",
    exchanges=(
        Exchange(
            user="Where is my order",
            bot="It shipped yesterday.",
            tool=Tool("lookup_order", {"order_id": "A-1"}, {"status": "shipped"}, "call_1"),
        ),
        Exchange(user="Thanks a lot", bot="You are welcome, goodbye!"),
    ),
    speed=4.0,
    stt_ttfb_s=0.2,
    llm_ttfb_s=0.6,
    tts_ttfb_s=0.4,
    prompt_tokens=100,
)
# What each service's first byte costs at the script's speed, in ms.
NOMINAL = {
    sc.TURN_STT_TTFB_MS: 50,
    sc.TURN_LLM_TTFB_MS: 150,
    sc.TURN_TTS_TTFB_MS: 100,
}
# Sleeps overshoot on a loaded machine, never undershoot.
SLACK_MS = 750


def _turn_events(otel: Otel) -> list[dict[str, Any]]:
    events = [
        (e.timestamp, dict(e.attributes or {}))
        for s in otel.spans()
        if s.name == sc.SPAN_CALL_SEGMENT
        for e in s.events
        if e.name == sc.EVENT_TURN
    ]
    return [attrs for _, attrs in sorted(events, key=lambda e: e[0])]


@pytest.mark.e2e
async def test_each_reply_carries_its_services_ttfb_and_tokens(
    exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    observer = RoarkObserver(agent_id="latency")
    await run_simulated_call(observer, script=SCRIPT)
    assert exporter.force_flush(15_000)
    ended = roark.wait_for_call_ended(observer.conversation_id, timeout=15)["ended"]

    turns = _turn_events(otel)
    assert [t[sc.TURN_ROLE] for t in turns] == [
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    greeting, user_1, reply_1, user_2, reply_2 = turns
    for reply, with_stt in ((greeting, False), (reply_1, True), (reply_2, True)):
        for name, nominal in NOMINAL.items():
            if name == sc.TURN_STT_TTFB_MS and not with_stt:
                # Nobody spoke before the greeting: no transcription to wait for.
                assert name not in reply
                continue
            assert nominal - 2 <= reply[name] <= nominal + SLACK_MS, (name, reply[name])
    for user in (user_1, user_2):
        assert not {*NOMINAL, sc.USAGE_INPUT_TOKENS, sc.TURN_LATENCY_MS} & set(user)

    # Tokens of every request behind the reply: the tool call made two.
    words = [len(e.bot.split()) for e in SCRIPT.exchanges]
    assert (reply_1[sc.USAGE_INPUT_TOKENS], reply_1[sc.USAGE_OUTPUT_TOKENS]) == (
        200,
        TOOL_CALL_TOKENS + words[0],
    )
    assert (reply_2[sc.USAGE_INPUT_TOKENS], reply_2[sc.USAGE_OUTPUT_TOKENS]) == (100, words[1])
    assert greeting[sc.USAGE_OUTPUT_TOKENS] == len((SCRIPT.greeting or "").split())

    # Caller stopped -> bot started spans at least the STT, LLM and TTS waits in between.
    for reply in (reply_1, reply_2):
        waits = reply[sc.TURN_STT_TTFB_MS] + reply[sc.TURN_LLM_TTFB_MS]
        assert reply[sc.TURN_LATENCY_MS] >= waits + reply[sc.TURN_TTS_TTFB_MS] - 5

    # Roark's payload is unchanged: the breakdown is for trace backends.
    assert set(ended["transcript"][2]) <= {
        "role",
        "content",
        "timestamp",
        "endTimestamp",
        "audioOffsetMs",
        "endAudioOffsetMs",
        "userId",
        "language",
    }


@pytest.mark.e2e
async def test_without_pipecat_metrics_turns_carry_no_breakdown(
    exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    """Metrics are Pipecat's (``enable_metrics``); with them off there is nothing to report."""
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.task import PipelineParams, PipelineTask

    from pipecat_roark_otel.simulation import SimulatedCall

    observer = RoarkObserver(agent_id="latency")
    call = SimulatedCall(Script(exchanges=SCRIPT.exchanges[1:], speed=16.0))
    task = PipelineTask(
        Pipeline(call.processors(observer.audio_processor)),
        params=PipelineParams(audio_out_sample_rate=24_000),
        observers=[observer],
    )
    await run(task)
    assert exporter.force_flush(15_000)
    roark.wait_for_call_ended(observer.conversation_id, timeout=15)
    [_, reply] = _turn_events(otel)
    assert sc.TURN_LATENCY_MS in reply
    assert not {*NOMINAL, sc.USAGE_INPUT_TOKENS, sc.USAGE_OUTPUT_TOKENS} & set(reply)


MS = 1_000_000
T0 = 1_700_000_000_000_000_000


def test_metrics_belong_to_the_reply_they_arrive_before() -> None:
    """First TTFB per service wins; tokens add up; a wordless reply takes its metrics along."""
    cap = CallCapture()
    cap.has_output_transport = True
    cap.service_ttfb("llm", 0.25)
    cap.bot_started(T0)
    cap.bot_stopped(T0 + MS)  # nothing was heard: its metrics go with it
    cap.service_ttfb("stt", 0.1)
    cap.service_ttfb("llm", 0.3)
    cap.service_ttfb("llm", 0.9)  # the second request of a tool call
    cap.service_ttfb("tts", 0.0)  # not a measurement
    cap.llm_usage(100, 16)
    cap.llm_usage(130, 5)
    cap.bot_started(T0 + 2 * MS)
    cap.tts_text(1, "Hi", False, T0 + 3 * MS, played=True)
    [reply] = cap.bot_stopped(T0 + 4 * MS)
    assert isinstance(reply, Turn)
    assert (reply.stt_ttfb_ms, reply.llm_ttfb_ms, reply.tts_ttfb_ms) == (100, 300, None)
    assert (reply.input_tokens, reply.output_tokens) == (230, 21)
    cap.bot_started(T0 + 5 * MS)
    cap.tts_text(2, "Again", False, T0 + 6 * MS, played=True)
    [next_reply] = cap.bot_stopped(T0 + 7 * MS)
    assert isinstance(next_reply, Turn)
    assert next_reply.llm_ttfb_ms is None and next_reply.input_tokens is None
