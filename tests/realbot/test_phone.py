"""examples/bot.py behind Pipecat's websocket transport and Twilio serializer, a phone caller."""

from __future__ import annotations

import asyncio
import time
from types import ModuleType

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from pipecat.runner.types import WebSocketRunnerArguments
from pipecat.workers.runner import WorkerRunner

from examples.offline.vendors import Agent, Vendors
from pipecat_roark_otel import semconv
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter

from ..conftest import Otel
from ..otlp_receiver import OtlpReceiver
from .harness import (
    BYE,
    JUST_ORDER,
    ORDER,
    PLANS,
    Recording,
    assert_audio_matches_turns,
    assert_only_heard_words,
    assert_user_turns_at_speech,
    exchanges,
    iso,
    load_slack_ms,
    phone_call,
    read_call,
)


async def test_a_complete_phone_call_and_its_trace(
    bot: ModuleType, vendors: Vendors, exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    with OtlpReceiver() as receiver:
        otlp = BatchSpanProcessor(OTLPSpanExporter(endpoint=receiver.traces_url))
        otel.add(otlp)
        async with phone_call(bot.bot, vendors) as (caller, runs):
            await caller.wait_for_bot()
            await caller.say(ORDER)
            await caller.wait_for_bot()
            await caller.say(BYE)
            await asyncio.wait_for(caller.stopped.wait(), 30)  # the bot hangs up
            await caller.hang_up()
            await runs.wait_finished()
        assert otlp.force_flush(10_000)
        assert exporter.force_flush(15_000)
        call = await read_call(roark)
        spans = receiver.spans()
    ended = call["ended"]

    # The bot ended the call after its goodbye, and the goodbye was played and heard.
    assert ended["callEndedReason"] == "agent-ended"
    assert exchanges(ended["transcript"]) == (
        [ORDER, BYE],
        [Agent.GREETING, Agent.ORDER_STATUS, Agent.GOODBYE],
    )
    assert caller.heard_speech_after(caller.said[-1][1]) >= 0.8
    assert vendors.hangups[caller.call_sid].is_set()  # through Twilio's REST API

    # The tool ran for real on OpenAILLMService; its result went back to the LLM.
    tools = [(r["kind"], r.get("name"), r["toolCallId"]) for r in ended["toolCalls"]]
    lookup, end = tools[0][2], tools[2][2]
    assert tools == [
        ("tool_call", "lookup_order", lookup),
        ("tool_result", None, lookup),
        ("tool_call", "end_call", end),
        ("tool_result", None, end),
    ]
    assert ended["toolCalls"][0]["arguments"] == '{"order_id":"A-1042"}'
    assert ended["toolCalls"][1]["content"] == (
        '{"order_id":"A-1042","status":"shipped","eta":"tomorrow"}'
    )
    assert any(
        m["role"] == "tool" and m["tool_call_id"] == lookup and "shipped" in m["content"]
        for m in vendors.chat_requests[-2]["messages"]
    )
    # The system prompt, set on the LLM service, opens every request.
    for request in vendors.chat_requests:
        first = request["messages"][0]
        assert first["role"] == "system" and bot.SYSTEM_PROMPT in first["content"], first

    # Stereo at the phone line's 8 kHz; each side's audio where its turns say.
    rec = Recording.parse(call["wav"])
    assert (rec.rate, rec.channels) == (8000, 2)
    assert (ended["recordingSampleRate"], ended["recordingNumChannels"]) == (8000, 2)
    assert_audio_matches_turns(rec, ended["transcript"])
    assert_user_turns_at_speech(caller, ended["transcript"])

    # One trace: Pipecat's own spans and ours, one conversation.id == pipecatCallId.
    call_id = ended["pipecatCallId"]
    names = {s.name for s in spans}
    assert {"conversation", "turn", "stt", "llm", "tts", semconv.SPAN_CALL} <= names, names
    (conversation,) = [s for s in spans if s.name == "conversation"]
    (ours,) = [s for s in spans if s.name == semconv.SPAN_CALL]
    assert ours.parent_span_id == conversation.span_id
    wanted = {"conversation", "turn", "stt", "llm", "tts", *semconv.SPAN_NAMES}
    correlated = [s for s in spans if s.name in wanted]
    assert {s.trace_id for s in correlated} == {conversation.trace_id}
    assert conversation.attributes[semconv.CONVERSATION_ID] == call_id
    assert ours.attributes[semconv.CONVERSATION_ID] == call_id


async def test_caller_hangs_up_mid_reply(
    bot: ModuleType, vendors: Vendors, exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    async with phone_call(bot.bot, vendors) as (caller, runs):
        await caller.wait_for_bot()
        await caller.say(PLANS)
        asked = time.time()
        await caller.wait_for_bot_speech(2.0)
        await caller.hang_up()  # Twilio "stop", then the socket closes
        hung_up_at = time.time()
        heard = caller.heard_since_bot_spoke(asked)
        await runs.wait_finished()
    assert exporter.force_flush(15_000)
    ended = (await read_call(roark))["ended"]

    assert ended["callEndedReason"] == "client-disconnected"
    transcript = ended["transcript"]
    lines, (greeting, reply) = exchanges(transcript)
    assert (lines, greeting) == ([PLANS], Agent.GREETING)
    began = iso(transcript[[t["content"] for t in transcript].index(PLANS) + 1]["timestamp"])
    played = hung_up_at - began
    assert_only_heard_words(vendors, reply, Agent.LONG, heard_s=heard, played_s=played)


async def test_without_the_disconnect_wiring_pipecat_still_ends_the_call(
    bot: ModuleType, vendors: Vendors, exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """No on_client_disconnected handler: the idle timeout tears the pipeline down."""

    async def forgot_the_wiring(runner_args: WebSocketRunnerArguments) -> None:
        runner_args.pipeline_idle_timeout_secs = 5
        transport = await bot.twilio_transport(runner_args)
        task, _ = bot.build_task(transport, runner_args, sample_rate=8000)
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(task)
        await runner.run()

    async with phone_call(forgot_the_wiring, vendors) as (caller, runs):
        await caller.wait_for_bot_speech(0.5)
        await caller.hang_up()
        await runs.wait_finished(timeout=60)
    assert exporter.force_flush(15_000)
    ended = (await read_call(roark))["ended"]
    assert ended["callEndedReason"] == "idle timeout"
    assert ended["transcript"][0]["role"] == "assistant"


async def test_caller_barges_in(
    bot: ModuleType, vendors: Vendors, exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    async with phone_call(bot.bot, vendors) as (caller, runs):
        await caller.wait_for_bot()
        await caller.say(PLANS)
        await caller.wait_for_bot_speech(2.0)
        await caller.say(JUST_ORDER)  # over the bot
        await caller.wait_for_bot()
        await caller.say(BYE)
        await asyncio.wait_for(caller.stopped.wait(), 30)
        await caller.hang_up()
        await runs.wait_finished()
    assert exporter.force_flush(15_000)
    call = await read_call(roark)
    ended = call["ended"]

    transcript = ended["transcript"]
    lines, replies = exchanges(transcript)
    assert lines == [PLANS, JUST_ORDER, BYE]
    assert replies[0] == Agent.GREETING
    assert replies[2:] == [Agent.ORDER_STATUS, Agent.GOODBYE]
    barge_at = [t["content"] for t in transcript].index(JUST_ORDER)
    first = transcript[[t["content"] for t in transcript].index(PLANS) + 1]
    cut, barge = transcript[barge_at - 1], transcript[barge_at]
    assert caller.cleared >= 1  # Pipecat told Twilio to drop the queued audio
    # The reply stops where the caller barged in: once the VAD has confirmed their speech.
    slack = load_slack_ms() / 1000
    assert 0 <= iso(cut["endTimestamp"]) - iso(barge["timestamp"]) <= 0.7 + slack, (cut, barge)
    played = iso(cut["endTimestamp"]) - iso(first["timestamp"])
    assert_only_heard_words(vendors, replies[1], Agent.LONG, heard_s=played, played_s=played)
    rec = Recording.parse(call["wav"])
    end = cut["endAudioOffsetMs"]
    assert rec.energy(rec.bot, end + 200, barge["endAudioOffsetMs"]) < 50
