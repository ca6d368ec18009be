"""Rules 1–3 (frames and hops), docs/CAPTURE_RULES.md: each test fails if its rule breaks."""

from __future__ import annotations

from typing import Any

import pytest
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    TranscriptionFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)

from pipecat_roark_otel import RoarkObserver
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter

from .support.capture import (
    E2E,
    INTERRUPTED,
    UP,
    Hops,
    hand_call,
    interrupted_call,
    now_iso,
    push,
    started_observer,
    turns,
)


async def test_rule_01_a_frame_seen_at_every_hop_acts_once(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """1. An observer sees the same frame once per processor hop: act on each frame once."""
    observer = await started_observer()
    h = Hops()
    user_path = (h.stt, h.agg, h.llm, h.tts, h.out, h.rec, h.sink)
    await push(observer, UserStartedSpeakingFrame(), *user_path)
    await push(observer, TranscriptionFrame("Hello!", "caller-1", now_iso()), *user_path)
    await push(observer, UserStoppedSpeakingFrame(), *user_path)
    await push(observer, BotStartedSpeakingFrame(), h.out, h.rec, h.sink)
    for word in ("Hi", "there."):
        # Generated at llm->tts->out, played at out->rec, then passed on to the sink.
        await push(observer, TTSTextFrame(word, "word"), h.llm, h.tts, h.out, h.rec, h.sink)
    await push(observer, BotStoppedSpeakingFrame(), h.out, h.rec, h.sink)
    ended = await hand_call(observer, exporter, roark)
    assert turns(ended) == [("user", "Hello!"), ("assistant", "Hi there.")]


async def test_rule_01_generated_text_seen_at_every_hop_counts_once(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """1. Act on each frame once: without an output transport, generated words too."""
    observer = await started_observer()
    h = Hops()
    for word in ("Hi", "there."):
        await push(observer, TTSTextFrame(word, "word"), h.llm, h.tts, h.agg, h.rec, h.sink)
    ended = await hand_call(observer, exporter, roark)
    assert turns(ended) == [("assistant", "Hi there.")]


async def test_rule_02_a_broadcast_pair_or_a_repeated_id_is_one_tool_event(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """2. A broadcast pair (linked by broadcast_sibling_id) is one event; one id is one call."""
    observer = await started_observer()
    h = Hops()

    async def broadcast(cls: type[Frame], **kwargs: Any) -> None:
        down, up = cls(**kwargs), cls(**kwargs)
        down.broadcast_sibling_id, up.broadcast_sibling_id = up.id, down.id
        await push(observer, down, h.llm, h.tts, h.out, h.rec)
        await push(observer, up, h.llm, h.agg, h.stt, direction=UP)

    order = {"function_name": "lookup_order", "tool_call_id": "call_1", "arguments": {"id": 7}}
    await broadcast(FunctionCallInProgressFrame, **order)
    await broadcast(FunctionCallResultFrame, **order, result={"status": "shipped"})
    # No id at all: only the sibling link says these two frames are one invocation.
    anon = {"function_name": "end_call", "tool_call_id": "", "arguments": None}
    await broadcast(FunctionCallInProgressFrame, **anon)
    await broadcast(FunctionCallResultFrame, **anon, result="ok")
    # Unlinked frames that share an id: still one invocation.
    again = {"function_name": "transfer", "tool_call_id": "call_2", "arguments": "{}"}
    for _ in range(2):
        await push(observer, FunctionCallInProgressFrame(**again), h.llm, h.tts)
        await push(observer, FunctionCallResultFrame(**again, result=True), h.llm, h.tts)

    ended = await hand_call(observer, exporter, roark)
    assert [(t["kind"], t["toolCallId"]) for t in ended["toolCalls"]] == [
        ("tool_call", "call_1"),
        ("tool_result", "call_1"),
        ("tool_call", ""),
        ("tool_result", ""),
        ("tool_call", "call_2"),
        ("tool_result", "call_2"),
    ]


class EveryPush(RoarkObserver):
    """Our observer as Pipecat without the first-push mode runs it: every push."""

    @property
    def observe_every_push(self) -> bool:
        return True


@E2E
@pytest.mark.parametrize("every_push", [False, True], ids=["first-pushes", "every-push"])
async def test_rule_03_played_words_hold_whichever_pushes_are_observed(
    every_push: bool, exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """3. Pipecat can deliver only first pushes; whatever the mode, rule 7 must still hold."""
    # The output transport's release of a TTSTextFrame is a repeat push of the same frame:
    # with first pushes only, the processor after the transport is what sees it played.
    observer = (EveryPush if every_push else RoarkObserver)(agent_id="capture-rules")
    if getattr(observer, "observe_every_push", True) is not every_push:
        pytest.skip("this Pipecat observes every push (it has no first-push mode)")
    ended, heard = await interrupted_call(exporter, roark, observer)
    assert 3 <= len(heard) < len(INTERRUPTED.exchanges[0].bot.split())
    assert turns(ended)[-1] == ("assistant", " ".join(heard))
