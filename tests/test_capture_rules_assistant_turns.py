"""Rules 7–9 (assistant turns), docs/CAPTURE_RULES.md: each test fails if its rule breaks."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InterruptionFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from pipecat_roark_otel import RoarkObserver
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter
from pipecat_roark_otel.simulation import SimulatedOutputTransport

from .support.capture import (
    E2E,
    INTERRUPTED,
    RATE,
    Driver,
    Hops,
    WordsHeard,
    driven_call,
    hand_call,
    interrupted_call,
    now_iso,
    pipeline_task,
    push,
    read_call,
    run,
    started_observer,
    tone,
    turns,
    unix_s,
)


@E2E
async def test_rule_07_interrupted_reply_records_only_the_words_played(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """7. Record the words the caller heard; generated but unplayed words are not transcript."""
    ended, heard = await interrupted_call(exporter, roark)
    reply = INTERRUPTED.exchanges[0].bot
    assert len(heard) < len(reply.split())
    assert turns(ended) == [("user", "Is it arriving today"), ("assistant", " ".join(heard))]


class SlowToInterrupt(FrameProcessor):
    """A TTS busy cancelling its stream: the interruption reaches the transport late."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            await asyncio.sleep(0.3)
        await self.push_frame(frame, direction)


@E2E
async def test_rule_07_words_played_until_the_interruption_reached_the_transport_count(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """7. An interruption is broadcast upstream of the transport, which plays on until it gets
    there: the caller heard those words, so the cut reply holds them, and nothing after."""
    reply = " ".join(f"word{i}" for i in range(40))
    heard = WordsHeard()

    async def script(d: Driver) -> None:
        await d.user_turn("Is it arriving today")
        await d.speak(reply, wait=False)
        while len(heard.words) < 2:
            await asyncio.sleep(0.005)
        await d.push_frame(UserStartedSpeakingFrame())
        await d.broadcast_interruption()
        d.mark("cut")
        d.marks["heard at cut"] = len(heard.words)
        await d.bot_stopped.wait()
        await asyncio.sleep(0.2)

    observer = RoarkObserver(agent_id="capture-rules")
    driver = Driver(script)
    transport = SimulatedOutputTransport(4.0)
    await run(pipeline_task(observer, driver, SlowToInterrupt(), transport, heard))
    ended = (await read_call(exporter, roark, observer.conversation_id))["ended"]
    assert driver.marks["heard at cut"] < len(heard.words) < 40  # played on, then stopped
    assert turns(ended) == [("user", "Is it arriving today"), ("assistant", " ".join(heard.words))]


@E2E
async def test_rule_07_without_output_transport_generated_words_are_the_transcript(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """7. A pipeline whose text never passes an output transport falls back to generated."""

    async def script(d: Driver) -> None:
        for word in ("Text", "only", "bot"):
            await d.push_frame(TTSTextFrame(word, "word"))

    observer = RoarkObserver(agent_id="capture-rules")
    await run(pipeline_task(observer, Driver(script)))
    call = await read_call(exporter, roark, observer.conversation_id)
    assert turns(call["ended"]) == [("assistant", "Text only bot")]


@E2E
async def test_rule_08_a_turn_with_no_played_words_leaves_nothing_not_even_timing(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """8. A bot turn runs BotStarted..BotStopped/Interruption; with no words played, nothing."""

    async def script(d: Driver) -> None:
        # Audio first, words queued behind it: cut off before any word plays.
        await d.push_frame(TTSStartedFrame())
        await d.push_frame(TTSAudioRawFrame(tone(1.0, RATE), RATE, 1))
        for word in ("never", "heard"):
            await d.push_frame(TTSTextFrame(word, "word"))
        await d.push_frame(TTSStoppedFrame())
        await d.bot_started.wait()
        await d.broadcast_interruption()
        await d.bot_stopped.wait()
        await asyncio.sleep(0.3)
        # The next turn's words play with no audio of their own (no BotStartedSpeaking):
        # only its own timing can stamp it.
        d.mark("second")
        for word in ("Second", "try"):
            await d.push_frame(TTSTextFrame(word, "word"))

    call, driver = await driven_call(exporter, roark, script, speed=2.0)
    ended = call["ended"]
    assert turns(ended) == [("assistant", "Second try")]
    [turn] = ended["transcript"]
    assert unix_s(turn["timestamp"]) >= driver.marks["second"] - 0.01
    assert unix_s(turn["endTimestamp"]) >= unix_s(turn["timestamp"])


@E2E
async def test_rule_07_a_word_released_after_the_audio_ended_is_still_that_replys(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """7/8. The output transport releases a word's text at its pts, on its own clock; on a
    starved loop that lands after the TTSStoppedFrame ended the reply. The word was heard."""

    async def script(d: Driver) -> None:
        d.bot_stopped.clear()
        await d.push_frame(TTSStartedFrame(context_id="reply-1"))
        for word in ("How", "can", "I"):
            await d.push_frame(TTSTextFrame(word, "word", context_id="reply-1"))
            await d.push_frame(TTSAudioRawFrame(tone(0.15, RATE), RATE, 1, context_id="reply-1"))
        late = TTSTextFrame("help?", "word", context_id="reply-1")
        late.pts = d.get_clock().get_time() + 400_000_000  # after the audio has played out
        await d.push_frame(late)
        await d.push_frame(TTSAudioRawFrame(tone(0.15, RATE), RATE, 1, context_id="reply-1"))
        await d.push_frame(TTSStoppedFrame(context_id="reply-1"))
        await d.bot_stopped.wait()
        d.mark("stopped")
        await asyncio.sleep(0.6)  # "help?" is released in here
        # The next reply, another context: a turn of its own.
        await d.speak("Anything else?")

    call, driver = await driven_call(exporter, roark, script, speed=16.0)
    ended = call["ended"]
    assert turns(ended) == [("assistant", "How can I help?"), ("assistant", "Anything else?")]
    # The turn still ends where its audio did, not when the late word came.
    first = ended["transcript"][0]
    assert unix_s(first["endTimestamp"]) <= driver.marks["stopped"] + 0.05


async def text_only_reply(d: Driver, text: str) -> None:
    """A reply generated with no output transport after it: no speaking frames, no playout."""
    await asyncio.sleep(0.05)
    for word in text.split():
        await d.push_frame(TTSTextFrame(word, "word"))
    await asyncio.sleep(0.05)


@E2E
@pytest.mark.parametrize("edges", [True, False], ids=["speaking-edges", "transcripts-only"])
async def test_rule_08_without_output_transport_each_reply_is_its_own_turn(
    edges: bool, exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """8. Text only: each reply closes when the next user turn starts (user, assistant, ...)."""

    async def script(d: Driver) -> None:
        for question, answer in (
            ("What is my balance", "Your balance is ten dollars."),
            ("And my last payment", "It was on Monday."),
        ):
            if edges:
                await d.user_turn(question)
            else:
                await d.push_frame(TranscriptionFrame(question, "caller-1", now_iso()))
            await text_only_reply(d, answer)

    observer = RoarkObserver(agent_id="capture-rules")
    await run(pipeline_task(observer, Driver(script)))
    ended = (await read_call(exporter, roark, observer.conversation_id))["ended"]
    assert turns(ended) == [
        ("user", "What is my balance"),
        ("assistant", "Your balance is ten dollars."),
        ("user", "And my last payment"),
        ("assistant", "It was on Monday."),
    ]
    transcript = ended["transcript"]
    for turn, following in itertools.pairwise(transcript):
        assert unix_s(turn["timestamp"]) <= unix_s(turn["endTimestamp"])
        assert unix_s(turn["endTimestamp"]) <= unix_s(following["timestamp"]) + 0.001


async def test_rule_09_spaced_deltas_concatenate_other_chunks_get_one_space(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """9. includes_inter_frame_spaces chunks concatenate ("Copper"+"line"); others one space."""
    observer = await started_observer()
    h = Hops()

    async def bot_turn(chunks: list[str], spaced: bool) -> None:
        await push(observer, BotStartedSpeakingFrame(), h.out, h.rec)
        for chunk in chunks:
            frame = TTSTextFrame(chunk, "word")
            frame.includes_inter_frame_spaces = spaced
            await push(observer, frame, h.tts, h.out, h.rec)
        await push(observer, BotStoppedSpeakingFrame(), h.out, h.rec)

    await bot_turn(["Copper", "line", " Care", ", how", " can", " I", " help?"], True)
    await bot_turn(["Thanks", "for", "calling."], False)
    user = TranscriptionFrame("Copper", "caller-1", now_iso())
    user.includes_inter_frame_spaces = True
    more = TranscriptionFrame("line please", "caller-1", now_iso())
    more.includes_inter_frame_spaces = True
    await push(observer, user, h.stt, h.agg)
    await push(observer, more, h.stt, h.agg)
    ended = await hand_call(observer, exporter, roark)
    assert turns(ended) == [
        ("assistant", "Copperline Care, how can I help?"),
        ("assistant", "Thanks for calling."),
        ("user", "Copperline please"),
    ]
