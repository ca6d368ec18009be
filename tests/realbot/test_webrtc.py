"""examples/bot.py behind Pipecat's SmallWebRTC transport, an aiortc caller over loopback."""

from __future__ import annotations

import time
from types import ModuleType

from examples.offline.vendors import Agent, Vendors
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter

from .harness import (
    BYE,
    ORDER,
    PLANS,
    Recording,
    assert_audio_matches_turns,
    assert_only_heard_words,
    assert_user_turns_at_speech,
    exchanges,
    iso,
    read_call,
    webrtc_call,
)


async def test_a_complete_webrtc_call(
    bot: ModuleType, vendors: Vendors, exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    async with webrtc_call(bot, vendors) as (caller, pc_id, runs):
        await caller.wait_for_bot()
        await caller.say(ORDER)
        await caller.wait_for_bot()
        await caller.say(BYE)
        await runs.wait_finished()  # the bot ends the call
    assert exporter.force_flush(15_000)
    call = await read_call(roark)
    ended = call["ended"]
    assert ended["pipecatCallId"] == pc_id
    assert ended["callEndedReason"] == "agent-ended"
    assert exchanges(ended["transcript"]) == (
        [ORDER, BYE],
        [Agent.GREETING, Agent.ORDER_STATUS, Agent.GOODBYE],
    )
    rec = Recording.parse(call["wav"])
    assert rec.channels == 2
    assert rec.rate == ended["recordingSampleRate"]
    assert_audio_matches_turns(rec, ended["transcript"])
    assert_user_turns_at_speech(caller, ended["transcript"])


async def test_webrtc_caller_hangs_up_mid_reply(
    bot: ModuleType, vendors: Vendors, exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    async with webrtc_call(bot, vendors) as (caller, _pc_id, runs):
        await caller.wait_for_bot()
        await caller.say(PLANS)
        asked = time.time()
        await caller.wait_for_bot_speech(2.0)
        heard = caller.heard_since_bot_spoke(asked)
        await caller.hang_up()  # the peer connection closes
        hung_up_at = time.time()
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
