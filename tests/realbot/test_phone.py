"""examples/bot.py behind Pipecat's websocket transport and Twilio serializer, a phone caller."""

from __future__ import annotations

import asyncio

from examples.offline.callers import TwilioCaller
from examples.offline.vendors import Agent, Vendors
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter

from .harness import (
    Recording,
    assert_audio_matches_turns,
    assert_user_turns_at_speech,
    phone_server,
    read_call,
)

# One breath each: a pause inside a line would be a second VAD turn.
ORDER = "I'd like to check on my order."
BYE = "Great thanks bye."


async def test_a_complete_phone_call(
    bot: object, vendors: Vendors, exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    vendors.caller_lines = [ORDER, BYE]
    async with phone_server(bot) as (url, runs):
        caller = TwilioCaller(url, hangups=vendors.hangups)
        await caller.dial()
        await caller.wait_for_bot()
        await caller.say(ORDER)
        await caller.wait_for_bot()
        await caller.say(BYE)
        await asyncio.wait_for(caller.stopped.wait(), 20)  # the bot hangs up
        await caller.hang_up()
        await runs.wait_finished()
    assert exporter.force_flush(15_000)
    call = await read_call(roark)
    ended = call["ended"]

    assert ended["callEndedReason"] == "agent-ended"
    assert [(t["role"], t["content"]) for t in ended["transcript"]] == [
        ("assistant", Agent.GREETING),
        ("user", ORDER),
        ("assistant", Agent.ORDER_STATUS),
        ("user", BYE),
        ("assistant", Agent.GOODBYE),
    ]
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
    # The function ran for real and its result went back to the LLM.
    assert any(
        m["role"] == "tool" and "shipped" in m["content"]
        for m in vendors.chat_requests[-2]["messages"]
    )
    rec = Recording.parse(call["wav"])
    assert (rec.rate, rec.channels) == (8000, 2)
    assert ended["recordingSampleRate"] == 8000
    assert_audio_matches_turns(rec, ended["transcript"])
    assert_user_turns_at_speech(caller, ended["transcript"])
    # The goodbye played out before the line closed: the caller heard it.
    assert caller.heard_speech_after(caller.said[-1][1]) >= 0.8
