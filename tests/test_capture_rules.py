"""One test per capture rule (docs/CAPTURE_RULES.md); each fails when its rule breaks.

Timing and ordering rules run a real PipelineTask (scripted processors, a playing output
transport, the observer's recorder) against the local Roark; the others push FramePushed
events by hand between real processor instances. Either way the call is read back from
what reached the local Roark.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import io
import itertools
import json
import logging
import math
import struct
import time
import wave
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelTaskFrame,
    EndFrame,
    EndTaskFrame,
    Frame,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    OutputAudioRawFrame,
    StartFrame,
    StopFrame,
    StopTaskFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import FramePushed
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.audio.audio_buffer_processor import AudioBufferProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from pipecat_roark_otel import RoarkObserver, _compat, _errors, semconv
from pipecat_roark_otel import observer as observer_module
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter
from pipecat_roark_otel.simulation import (
    Exchange,
    Script,
    SimulatedCall,
    SimulatedOutputTransport,
    Tool,
    run_simulated_call,
)

from .conftest import Otel

E2E = pytest.mark.e2e
RATE = 24_000
IN_RATE = 16_000
TICK_S = 0.02
TIMEOUT_S = 30.0
DOWN = FrameDirection.DOWNSTREAM
UP = FrameDirection.UPSTREAM


# -- reading a call back ---------------------------------------------------------


async def read_call(exporter: RoarkSpanExporter, roark: LocalRoark, call_id: str) -> dict[str, Any]:
    """The stored call once call-ended arrived; the loop keeps running while we wait."""
    assert await asyncio.to_thread(exporter.force_flush, 15_000)
    return await asyncio.to_thread(roark.wait_for_call_ended, call_id, 15)


def turns(ended: dict[str, Any]) -> list[tuple[str, str]]:
    return [(t["role"], t["content"]) for t in ended.get("transcript", [])]


def ended_requests(roark: LocalRoark, call_id: str) -> list[dict[str, Any]]:
    return [
        r
        for r in roark.requests(call_id)
        if r["event"] == "call-ended" and r["status"] is not None and r["status"] < 300
    ]


def unix_s(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def stereo(wav: bytes) -> tuple[int, array.array[int], array.array[int]]:
    """(rate, left = user, right = bot) of a stereo 16-bit WAV."""
    with wave.open(io.BytesIO(wav)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (2, 2)
        rate = w.getframerate()
        pcm = array.array("h", w.readframes(w.getnframes()))
    return rate, pcm[0::2], pcm[1::2]


def audible(samples: array.array[int]) -> list[int]:
    return [i for i, v in enumerate(samples) if abs(v) > 200]


def tone(seconds: float, rate: int, freq: float = 440.0, start: int = 0) -> bytes:
    n = int(rate * seconds)
    return struct.pack(
        f"<{n}h", *(int(6000 * math.sin(2 * math.pi * freq * (start + i) / rate)) for i in range(n))
    )


# -- hand-pushed hops ----------------------------------------------------------------


class Hops:
    """Real processor instances to push between, as a Pipecat pipeline would."""

    def __init__(self) -> None:
        self.stt = FrameProcessor(name="stt")
        self.agg = FrameProcessor(name="user-aggregator")
        self.llm = FrameProcessor(name="llm")
        self.tts = FrameProcessor(name="tts")
        self.out = SimulatedOutputTransport(8.0)
        self.rec = FrameProcessor(name="after-output")
        self.sink = FrameProcessor(name="sink")


async def push(
    observer: RoarkObserver, frame: Frame, *path: FrameProcessor, direction: FrameDirection = DOWN
) -> None:
    """Report ``frame`` once per hop along ``path``, as Pipecat does with every push."""
    for source, destination in itertools.pairwise(path):
        await observer.on_push_frame(
            FramePushed(
                source=source,
                destination=destination,
                frame=frame,
                direction=direction,
                timestamp=0,
            )
        )


async def started_observer() -> RoarkObserver:
    observer = RoarkObserver(agent_id="capture-rules")
    await observer.on_pipeline_started()
    return observer


async def hand_call(
    observer: RoarkObserver, exporter: RoarkSpanExporter, roark: LocalRoark
) -> dict[str, Any]:
    await observer.aflush(reason="client-disconnected")
    call = await read_call(exporter, roark, observer.conversation_id)
    ended: dict[str, Any] = call["ended"]
    return ended


# -- a real pipeline driven by a test script -----------------------------------------

DriverScript = Callable[["Driver"], Awaitable[None]]


class Driver(FrameProcessor):
    """First processor: plays the test's script once started, then asks the task to end."""

    def __init__(self, script: DriverScript, *, then: type[Frame] | None = EndTaskFrame) -> None:
        super().__init__(name="driver")
        self._script = script
        self._then = then
        self._task: asyncio.Task[None] | None = None
        self._sample = 0
        self.bot_started = asyncio.Event()
        self.bot_stopped = asyncio.Event()
        self.done = asyncio.Event()
        self.marks: dict[str, float] = {}

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, BotStartedSpeakingFrame):
            self.bot_started.set()
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self.bot_stopped.set()
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._task = self.create_task(self._run())

    async def cleanup(self) -> None:
        await super().cleanup()
        if self._task is not None:
            await self.cancel_task(self._task)

    async def _run(self) -> None:
        await self._script(self)
        self.done.set()
        if self._then is not None:
            await self.push_frame(self._then(), UP)

    def mark(self, name: str) -> None:
        self.marks[name] = time.time()

    async def user_audio(self, seconds: float, *, speed: float) -> None:
        """Caller audio in 20 ms frames, paced at ``speed`` times real time."""
        n = int(IN_RATE * TICK_S)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(max(1, round(seconds / TICK_S))):
            audio = tone(TICK_S, IN_RATE, 220.0, self._sample)
            await self.push_frame(InputAudioRawFrame(audio, IN_RATE, 1))
            self._sample += n
            # Paced against the start, so sleep overshoot never accumulates.
            await asyncio.sleep(max(0.0, start + (i + 1) * TICK_S / speed - loop.time()))

    async def user_turn(
        self,
        *segments: str,
        seconds: float = 0.2,
        speed: float = 16.0,
        stop: bool = True,
        start: bool = True,
    ) -> None:
        if start:
            await self.push_frame(UserStartedSpeakingFrame())
        await self.user_audio(seconds, speed=speed)
        if stop:
            await self.push_frame(UserStoppedSpeakingFrame())
        for text in segments:
            await self.push_frame(TranscriptionFrame(text, "caller-1", now_iso()))

    async def speak(self, text: str, *, word_s: float = 0.15, wait: bool = True) -> None:
        """TTS: each word's text then its audio; with ``wait``, until the bot stopped."""
        self.bot_started.clear()
        self.bot_stopped.clear()
        await self.push_frame(TTSStartedFrame())
        for word in text.split():
            await self.push_frame(TTSTextFrame(word, "word"))
            await self.push_frame(TTSAudioRawFrame(tone(word_s, RATE), RATE, 1))
        await self.push_frame(TTSStoppedFrame())
        if wait:
            await self.bot_stopped.wait()


def pipeline_task(
    observer: RoarkObserver,
    *processors: FrameProcessor,
    after: tuple[FrameProcessor, ...] = (),
    rate: int = RATE,
) -> PipelineTask:
    """``processors``, then the observer's recorder, then ``after``."""
    return PipelineTask(
        Pipeline([*processors, observer.audio_processor, *after]),
        params=PipelineParams(audio_out_sample_rate=rate),
        observers=[observer],
        enable_tracing=False,
    )


async def run(task: PipelineTask) -> None:
    runner = PipelineRunner(handle_sigint=False)
    await runner.add_workers(task)
    await asyncio.wait_for(runner.run(), TIMEOUT_S)


async def driven_call(
    exporter: RoarkSpanExporter,
    roark: LocalRoark,
    script: DriverScript,
    *,
    speed: float = 16.0,
    then: type[Frame] | None = EndTaskFrame,
) -> tuple[dict[str, Any], Driver]:
    """Driver -> playing output transport -> recorder; the call as Roark received it."""
    observer = RoarkObserver(agent_id="capture-rules")
    driver = Driver(script, then=then)
    await run(pipeline_task(observer, driver, SimulatedOutputTransport(speed)))
    call = await read_call(exporter, roark, observer.conversation_id)
    return call, driver


class WordsHeard(FrameProcessor):
    """Placed after the output transport: the TTS words it released, i.e. the words played."""

    def __init__(self) -> None:
        super().__init__(name="words-heard")
        self.words: list[str] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSTextFrame) and direction == DOWN:
            self.words.append(frame.text)
        await self.push_frame(frame, direction)


INTERRUPTED = Script(
    exchanges=(
        Exchange(
            user="Is it arriving today",
            bot="Your order shipped yesterday and will arrive tomorrow before noon for sure",
            interrupt_after_words=3,
        ),
    ),
    speed=16.0,
)


async def interrupted_call(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> tuple[dict[str, Any], list[str]]:
    """The simulated caller cuts the bot off after three words: (call-ended, words played)."""
    observer = RoarkObserver(agent_id="capture-rules")
    call = SimulatedCall(INTERRUPTED)
    heard = WordsHeard()
    await run(pipeline_task(observer, *call.processors(heard)))
    stored = await read_call(exporter, roark, observer.conversation_id)
    return stored["ended"], heard.words


# == Frames and hops =====================================================================


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


@E2E
async def test_rule_03_every_push_is_observed_so_played_words_hold(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """3. Pipecat can deliver only first pushes; whatever the mode, rule 7 must still hold."""
    # The output transport's release of a TTSTextFrame is a repeat push of the same frame:
    # with first pushes only, the words heard would be invisible.
    assert RoarkObserver(agent_id="a").observe_every_push is True
    ended, heard = await interrupted_call(exporter, roark)
    assert 3 <= len(heard) < len(INTERRUPTED.exchanges[0].bot.split())
    assert turns(ended)[-1] == ("assistant", " ".join(heard))


# == User turns ==========================================================================


async def test_rule_04_every_transcription_frame_is_final_whatever_finalized_says(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """4. Every TranscriptionFrame is final (interims are separate): never gate on finalized."""
    observer = await started_observer()
    h = Hops()
    for text, finalized in (("streaming final", False), ("explicit final", True)):
        await push(observer, UserStartedSpeakingFrame(), h.stt, h.agg)
        await push(observer, InterimTranscriptionFrame("interim guess", "u", now_iso()), h.stt)
        frame = TranscriptionFrame(text, "caller-1", now_iso(), finalized=finalized)
        await push(observer, frame, h.stt, h.agg)
        await push(observer, UserStoppedSpeakingFrame(), h.stt, h.agg)
    ended = await hand_call(observer, exporter, roark)
    assert turns(ended) == [("user", "streaming final"), ("user", "explicit final")]


@E2E
async def test_rule_05_user_turns_aggregate_and_close_at_each_boundary(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """5. Aggregate a user turn, close it at bot start / next user start / call end."""

    async def script(d: Driver) -> None:
        await d.user_turn("I need", "a refund")  # two final segments, one turn
        await d.user_turn("for order five", stop=False)  # back to back, no reply between
        await asyncio.sleep(0.3)  # the pause before the bot answers
        await d.speak("Sure thing")  # bot start closes the turn above
        await d.user_turn("thanks", stop=False)  # closed by the end of the call

    call, _ = await driven_call(exporter, roark, script)
    ended = call["ended"]
    assert turns(ended) == [
        ("user", "I need a refund"),
        ("user", "for order five"),
        ("assistant", "Sure thing"),
        ("user", "thanks"),
    ]
    _, second, bot, last = ended["transcript"]
    # No offset frame: the end is the moment the turn closed, which was the bot's onset.
    assert second["endTimestamp"] == bot["timestamp"]
    assert unix_s(last["endTimestamp"]) >= unix_s(bot["endTimestamp"])


@E2E
async def test_rule_06_user_turn_is_stamped_at_speech_edges_not_stt_time(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """6. A turn is stamped at speech onset and offset, not at STT emit time."""

    async def script(d: Driver) -> None:
        await asyncio.sleep(0.2)
        d.mark("onset")
        await d.push_frame(UserStartedSpeakingFrame())
        await d.user_audio(0.3, speed=1.0)
        d.mark("offset")
        await d.push_frame(UserStoppedSpeakingFrame())
        await asyncio.sleep(0.5)  # a slow STT
        d.mark("stt")
        await d.push_frame(TranscriptionFrame("where is my parcel", "caller-1", now_iso()))

    call, driver = await driven_call(exporter, roark, script)
    [turn] = call["ended"]["transcript"]
    marks = driver.marks
    assert abs(unix_s(turn["timestamp"]) - marks["onset"]) < 0.05
    assert abs(unix_s(turn["endTimestamp"]) - marks["offset"]) < 0.05
    assert unix_s(turn["endTimestamp"]) < marks["stt"] - 0.3


async def test_rule_06_without_speaking_edges_falls_back_and_end_is_never_omitted(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """6. Without onset frames use the frame's timestamp; without offset, the close time."""
    observer = await started_observer()
    h = Hops()
    stt_time = "2026-01-02T03:04:05.678+00:00"
    await push(observer, TranscriptionFrame("no edges here", "caller-1", stt_time), h.stt, h.agg)
    before_close = time.time()
    ended = await hand_call(observer, exporter, roark)
    [turn] = ended["transcript"]
    assert turn["timestamp"] == stt_time
    assert unix_s(turn["endTimestamp"]) >= before_close - 0.001


# == Assistant turns =====================================================================


@E2E
async def test_rule_07_interrupted_reply_records_only_the_words_played(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """7. Record the words the caller heard; generated but unplayed words are not transcript."""
    ended, heard = await interrupted_call(exporter, roark)
    reply = INTERRUPTED.exchanges[0].bot
    assert len(heard) < len(reply.split())
    assert turns(ended) == [("user", "Is it arriving today"), ("assistant", " ".join(heard))]


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


# == Tool calls ==========================================================================


class _Unserialisable:
    def __repr__(self) -> str:
        return "Unserialisable()"


async def test_rule_10_tool_calls_and_results_are_stringified_per_contract(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """10. InProgress -> tool_call, Result -> tool_result, by toolCallId; values never crash."""
    observer = await started_observer()
    h = Hops()
    cases: list[tuple[str, object, object]] = [
        ("c1", {"order_id": "A-1042", "items": [1, 2]}, {"status": "shipped"}),
        ("c2", '{"raw": "json string"}', ["a", "b"]),
        ("c3", None, None),
        ("c4", {"when": _Unserialisable()}, 42),
        ("c5", {(1, 2): "tuple key"}, {(1, 2): _Unserialisable()}),
        ("c6", [_Unserialisable()], _Unserialisable()),
    ]
    for call_id, arguments, result in cases:
        kwargs = {"function_name": f"fn_{call_id}", "tool_call_id": call_id, "arguments": arguments}
        await push(observer, FunctionCallInProgressFrame(**kwargs), h.llm, h.tts)
        await push(observer, FunctionCallResultFrame(**kwargs, result=result), h.llm, h.tts)
    ended = await hand_call(observer, exporter, roark)
    records = ended["toolCalls"]
    calls = [r for r in records if r["kind"] == "tool_call"]
    results = {r["toolCallId"]: r["content"] for r in records if r["kind"] == "tool_result"}
    assert [r["kind"] for r in records] == ["tool_call", "tool_result"] * len(cases)
    assert [(c["toolCallId"], c["name"]) for c in calls] == [
        (call_id, f"fn_{call_id}") for call_id, _, _ in cases
    ]
    arguments = {c["toolCallId"]: c["arguments"] for c in calls}
    assert arguments["c1"] == '{"order_id":"A-1042","items":[1,2]}'
    assert arguments["c2"] == '{"raw": "json string"}'
    assert arguments["c3"] == "{}"
    assert arguments["c4"] == '{"when":"Unserialisable()"}'
    assert arguments["c5"] == '{"[1,2]":"tuple key"}'
    assert arguments["c6"] == '["Unserialisable()"]'
    assert results == {
        "c1": '{"status":"shipped"}',
        "c2": '["a","b"]',
        "c3": "",
        "c4": "42",
        "c5": '{"[1,2]":"Unserialisable()"}',
        "c6": "Unserialisable()",
    }


ODD_TOOLS = Script(
    exchanges=(
        Exchange(
            user="When can you come",
            bot="Tuesday works.",
            tool=Tool(
                "find_slots",
                {"days": ("mon", "tue"), "after": datetime(2026, 3, 4, 9, 30, tzinfo=UTC)},
                (1, "a"),
                "odd_1",
            ),
        ),
        Exchange(
            user="How much",
            bot="Twelve fifty.",
            tool=Tool(
                "quote",
                ("A-1", 2),
                {
                    "total": Decimal("12.50"),
                    "ref": UUID(int=7),
                    "tags": {"b", "a"},
                    "who": _Unserialisable(),
                },
                "odd_2",
            ),
        ),
    ),
    speed=16.0,
)


@E2E
async def test_rule_10_tuples_sets_and_odd_leaves_reach_roark_as_json(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """10. Containers go as JSON of the same shape, never as a Python repr."""
    observer = RoarkObserver(agent_id="capture-rules")
    await run(pipeline_task(observer, *SimulatedCall(ODD_TOOLS).processors(None)))
    ended = (await read_call(exporter, roark, observer.conversation_id))["ended"]
    wire = {(r["kind"], r["toolCallId"]): r for r in ended["toolCalls"]}
    assert wire["tool_call", "odd_1"]["arguments"] == (
        '{"days":["mon","tue"],"after":"2026-03-04T09:30:00+00:00"}'
    )
    assert wire["tool_result", "odd_1"]["content"] == '[1,"a"]'
    assert wire["tool_call", "odd_2"]["arguments"] == '["A-1",2]'
    assert json.loads(wire["tool_result", "odd_2"]["content"]) == {
        "total": "12.50",
        "ref": str(UUID(int=7)),
        "tags": ["a", "b"],
        "who": "Unserialisable()",
    }


# == Recording ===========================================================================


class ArmedAtStart(FrameProcessor):
    """After the recorder: was it armed when the StartFrame left it?"""

    def __init__(self, recorder: AudioBufferProcessor) -> None:
        super().__init__(name="armed-at-start")
        self._recorder = recorder
        self.armed: bool | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self.armed = _compat.is_recording(self._recorder)
        await self.push_frame(frame, direction)


GREETING = "Hello! Thanks for calling Copperline."
GREETING_WORD_S = 0.15


async def greet(d: Driver) -> None:
    """The bot speaks first, the moment the pipeline starts."""
    await d.speak(GREETING, word_s=GREETING_WORD_S)


def assert_greeting_recorded(wav: bytes | None) -> None:
    assert wav is not None
    rate, _, bot = stereo(wav)
    voiced = audible(bot)
    expected = len(GREETING.split()) * GREETING_WORD_S * rate
    assert voiced and voiced[0] < 0.05 * rate  # from the start of the recording
    assert len(voiced) >= 0.9 * expected  # and all of it


@E2E
async def test_rule_11_a_bot_that_speaks_first_keeps_its_greeting(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """11. Arm the recorder inline on its StartFrame, or a bot's greeting is lost."""
    observer = RoarkObserver(agent_id="capture-rules")
    probe = ArmedAtStart(observer.audio_processor)
    task = pipeline_task(observer, Driver(greet), SimulatedOutputTransport(16.0), after=(probe,))
    await run(task)
    call = await read_call(exporter, roark, observer.conversation_id)
    assert probe.armed is True
    assert turns(call["ended"]) == [("assistant", GREETING)]
    assert_greeting_recorded(roark.wav_bytes(observer.conversation_id))


class CountingRecorder(AudioBufferProcessor):
    """A user's own recorder that counts how often it is armed."""

    def __init__(self) -> None:
        super().__init__(num_channels=2, buffer_size=256 * 1024)
        self.armed = 0

    async def start_recording(self) -> None:
        self.armed += 1
        await super().start_recording()


@E2E
@pytest.mark.parametrize("armed_by_user", [True, False], ids=["pre-armed", "unarmed"])
async def test_rule_12_a_recorder_the_user_armed_is_not_rearmed(
    armed_by_user: bool, exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """12. A recorder the user passes in, already armed, must not be re-armed."""
    recorder = CountingRecorder()
    if armed_by_user:
        await recorder.start_recording()
    observer = RoarkObserver(agent_id="capture-rules", audio_buffer_processor=recorder)
    await run(pipeline_task(observer, Driver(greet), SimulatedOutputTransport(16.0)))
    call = await read_call(exporter, roark, observer.conversation_id)
    # Armed exactly once: by the user, or by the observer when the user had not.
    assert recorder.armed == 1
    assert call["ended"]["recordingNumChannels"] == 2
    assert_greeting_recorded(roark.wav_bytes(observer.conversation_id))


@E2E
async def test_rule_13_offsets_count_from_the_first_audio_frame_kept(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """13. Sample 0 is the first audio frame the recorder keeps; audioOffsetMs counts from it."""

    async def script(d: Driver) -> None:
        await asyncio.sleep(0.4)  # armed, but no audio yet
        await d.user_turn("hello there", seconds=0.3, speed=1.0)
        await asyncio.sleep(0.5)
        await d.speak("Hi", word_s=0.3)

    call, _ = await driven_call(exporter, roark, script, speed=1.0, then=CancelTaskFrame)
    wav = roark.wav_bytes(call["pipecatCallId"])
    assert wav is not None
    rate, user_pcm, bot_pcm = stereo(wav)
    user_voiced, bot_voiced = audible(user_pcm), audible(bot_pcm)
    user, bot = call["ended"]["transcript"]
    assert user["audioOffsetMs"] < 60  # not the 400 ms since arming

    def ms(sample: int) -> float:
        return 1000 * sample / rate

    assert abs(user["audioOffsetMs"] - ms(user_voiced[0])) < 60
    assert abs(user["endAudioOffsetMs"] - ms(user_voiced[-1])) < 60
    # The bot's place in the WAV is rebuilt by Pipecat's recorder from wall-clock gaps
    # (resampler latency included): consistent within a tenth of a second or so.
    assert abs(bot["audioOffsetMs"] - ms(bot_voiced[0])) < 150


@E2E
async def test_rule_14_the_tail_chunk_is_uploaded_before_call_ended(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """14. stop_recording()'s tail goes to the handlers, is uploaded, then call-ended."""
    observer = RoarkObserver(agent_id="capture-rules")
    recorded: list[bytes] = []

    async def keep(_p: object, audio: bytes, _rate: int, _channels: int) -> None:
        recorded.append(bytes(audio))

    observer.audio_processor.add_event_handler("on_audio_data", keep)
    await run(pipeline_task(observer, Driver(greet), SimulatedOutputTransport(16.0)))
    call_id = observer.conversation_id
    await read_call(exporter, roark, call_id)
    # A short call never fills a chunk: its one chunk is the tail stop_recording() flushes.
    assert len(recorded) == 1
    wav = roark.wav_bytes(call_id)
    assert wav is not None and wav[44:] == recorded[0]
    log = [r for r in roark.requests(call_id) if r["status"] is not None and r["status"] < 300]
    kinds = [r["event"] or r["endpoint"] for r in log]
    assert kinds[0] == "call-started"
    assert kinds[-1] == "call-ended"
    assert "upload" in kinds


@pytest.fixture
def short_handler_timeout(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(observer_module, "AUDIO_HANDLER_TIMEOUT_S", 0.5)
    return 0.5


@E2E
async def test_rule_14_a_hanging_audio_handler_does_not_hold_call_ended(
    exporter: RoarkSpanExporter, roark: LocalRoark, short_handler_timeout: float
) -> None:
    """14. A handler that hangs must not hold call-ended forever."""
    observer = RoarkObserver(agent_id="capture-rules")
    hanging, release = asyncio.Event(), asyncio.Event()

    async def hang(*_args: object) -> None:
        hanging.set()
        await release.wait()

    observer.audio_processor.add_event_handler("on_audio_data", hang)
    # Pipecat's own cleanup waits for handler tasks, so the runner waits for the release.
    runner = asyncio.create_task(
        run(pipeline_task(observer, Driver(greet), SimulatedOutputTransport(16.0)))
    )
    try:
        call = await read_call(exporter, roark, observer.conversation_id)
        assert hanging.is_set() and not release.is_set()
        assert call["ended"]["recordingSampleRate"] == RATE
        assert roark.wav_bytes(observer.conversation_id) is not None
    finally:
        release.set()
        await runner


@E2E
@pytest.mark.parametrize("rate", [8_000, 48_000])
async def test_rule_15_the_recording_rate_is_the_pipelines_output_rate(
    rate: int, exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """15. The sample rate is the pipeline's negotiated output rate, never hard-coded."""
    observer = RoarkObserver(agent_id="capture-rules")
    script = Script(exchanges=(), greeting="Hi there", speed=16.0)
    await run_simulated_call(
        observer, script=script, audio_out_sample_rate=rate, enable_tracing=False
    )
    call = await read_call(exporter, roark, observer.conversation_id)
    assert call["ended"]["recordingSampleRate"] == rate
    assert call["ended"]["recordingNumChannels"] == 2
    wav = roark.wav_bytes(observer.conversation_id)
    assert wav is not None
    assert stereo(wav)[0] == rate


# == Ending a call =======================================================================


@E2E
@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("EndFrame", "bye"),
        ("CancelFrame", "host-cancelled"),
        ("StopFrame", None),
        ("aflush", "client-disconnected"),
    ],
)
async def test_rule_16_every_end_path_ends_the_call_once(
    how: str,
    reason: str | None,
    exporter: RoarkSpanExporter,
    roark: LocalRoark,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """16. EndFrame, CancelFrame, StopFrame and aflush() end the call; the second is a no-op."""
    caplog.set_level(logging.WARNING, logger="opentelemetry.sdk.trace")

    async def script(d: Driver) -> None:
        await d.user_turn("hello")
        await d.speak("Hi")

    observer = RoarkObserver(agent_id="capture-rules")
    driver = Driver(script, then=None)
    task = pipeline_task(observer, driver, SimulatedOutputTransport(16.0))
    runner = asyncio.create_task(run(task))
    await asyncio.wait_for(driver.done.wait(), TIMEOUT_S)
    if how == "EndFrame":
        await task.queue_frame(EndFrame(reason=reason))
    elif how == "CancelFrame":
        await task.cancel(reason=reason)
    elif how == "StopFrame":
        await task.queue_frame(StopFrame())
    else:
        await observer.aflush(reason="client-disconnected")
        await task.queue_frame(EndFrame(reason="second-path"))
    await runner
    await observer.aflush(reason="late-aflush")  # ending again is a no-op ...
    # ... not a second end of the call span that the SDK shrugs off.
    assert not [r for r in caplog.records if "ended span" in r.getMessage()]

    call = await read_call(exporter, roark, observer.conversation_id)
    ended = call["ended"]
    assert turns(ended) == [("user", "hello"), ("assistant", "Hi")]
    assert ended["callEndedReason"] not in ("late-aflush", "second-path")
    if reason is not None:
        assert ended["callEndedReason"] == reason
    assert len(ended_requests(roark, observer.conversation_id)) == 1


@E2E
@pytest.mark.parametrize("ask", [EndTaskFrame, StopTaskFrame])
async def test_rule_17_end_waits_for_the_transport_to_play_out_the_last_words(
    ask: type[Frame], exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """17. With an output transport, EndFrame/StopFrame end the call once it played out."""
    last_words = "Thanks for calling and have a lovely day"

    async def script(d: Driver) -> None:
        # Queue the goodbye and ask to end at once, as a bot's end_call tool does.
        await d.speak(last_words, word_s=0.2, wait=False)

    call, _ = await driven_call(exporter, roark, script, speed=4.0, then=ask)
    assert turns(call["ended"]) == [("assistant", last_words)]


class StuckSpeaker(SimulatedOutputTransport):
    """A dead client: the first audio write never returns and shrugs off one cancellation."""

    def __init__(self) -> None:
        super().__init__(1.0)
        self.release = asyncio.Event()

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            await self.release.wait()
        return True


@E2E
async def test_rule_17_cancel_ends_the_call_at_once(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """17. A CancelFrame ends the call at once, even while the transport is stuck playing."""
    long_reply = " ".join(f"word{i}" for i in range(20))

    async def script(d: Driver) -> None:
        await d.speak(long_reply, word_s=0.2, wait=False)

    observer = RoarkObserver(agent_id="capture-rules")
    driver = Driver(script, then=None)
    speaker = StuckSpeaker()
    task = pipeline_task(observer, driver, speaker)
    runner = asyncio.create_task(run(task))
    try:
        await asyncio.wait_for(driver.bot_started.wait(), TIMEOUT_S)
        cancelled_at = time.time()
        await task.cancel()
        ended = (await read_call(exporter, roark, observer.conversation_id))["ended"]
    finally:
        speaker.release.set()
        await runner
    # Pipecat gives the stuck transport a second before passing the CancelFrame on.
    assert unix_s(ended["callEndedAt"]) - cancelled_at < 0.5
    [(role, content)] = turns(ended)
    assert role == "assistant"
    assert long_reply.startswith(content) and content != long_reply


class EndWatchingObserver(RoarkObserver):
    """Tells the test when it starts handling the EndFrame the output transport passed on."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ending = asyncio.Event()

    async def on_push_frame(self, data: FramePushed) -> None:
        if isinstance(data.frame, EndFrame) and _compat.is_output_transport(data.source):
            self.ending.set()
        await super().on_push_frame(data)


@E2E
async def test_rule_18_cancelling_the_host_task_mid_send_does_not_lose_call_ended(
    exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    """18. Host cancel while call-ended is being sent: the send survives; aflush() awaits it."""
    roark.faults.set_latency(0.2, endpoint="webhook")  # a slow Roark, too
    observer = EndWatchingObserver(agent_id="capture-rules")
    tail_started, release = asyncio.Event(), asyncio.Event()

    async def slow_tail(*_args: object) -> None:
        tail_started.set()
        await release.wait()

    # The end of the call waits for this handler: the send is in flight until release.
    observer.audio_processor.add_event_handler("on_audio_data", slow_tail)
    runner = asyncio.create_task(
        run(pipeline_task(observer, Driver(greet), SimulatedOutputTransport(16.0)))
    )
    await asyncio.wait_for(observer.ending.wait(), TIMEOUT_S)
    await asyncio.wait_for(tail_started.wait(), TIMEOUT_S)
    runner.cancel()  # the host gives up on the pipeline mid-send

    later = asyncio.create_task(observer.aflush(reason="client-disconnected"))
    done, _ = await asyncio.wait({later}, timeout=0.3)
    assert not done  # aflush() waits for the send in flight ...
    release.set()
    await asyncio.wait_for(later, TIMEOUT_S)
    # ... and once it returns, that send's call span is written.
    [call_span] = [s for s in otel.spans() if s.name == semconv.SPAN_CALL]
    assert call_span.attributes is not None
    assert call_span.attributes[semconv.CALL_ENDED_REASON] == "agent-ended"
    with contextlib.suppress(asyncio.CancelledError):
        await runner

    ended = (await read_call(exporter, roark, observer.conversation_id))["ended"]
    assert ended["callEndedReason"] == "agent-ended"
    assert turns(ended) == [("assistant", GREETING)]
    assert len(ended_requests(roark, observer.conversation_id)) == 1


class _NoTruth:
    """Text that formats fine but explodes when our code tests it."""

    def __bool__(self) -> bool:
        raise RuntimeError("hostile text")

    def __str__(self) -> str:
        return "hostile"


class _Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __str__(self) -> str:
        raise RuntimeError("no str")


@pytest.fixture
def guard_swallows() -> Iterator[None]:
    """The shipped behaviour: the guard logs instead of re-raising (conftest turns it on)."""
    _errors.reset()  # a fresh once-per-minute log window
    _errors.set_raise_internal_errors(False)
    try:
        yield
    finally:
        _errors.set_raise_internal_errors(True)


@E2E
async def test_rule_19_nothing_raises_into_the_pipeline_and_failures_log_once(
    exporter: RoarkSpanExporter,
    roark: LocalRoark,
    guard_swallows: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """19. Nothing the integration does ever raises into the pipeline; failures log once."""
    key = "internal_error:on_push_frame"
    drops_before = _errors.dropped[key]

    async def script(d: Driver) -> None:
        hostile: list[Frame] = [
            TranscriptionFrame(None, "caller-1", now_iso()),  # type: ignore[arg-type]
            TranscriptionFrame(42, None, None),  # type: ignore[arg-type]
            TranscriptionFrame(_NoTruth(), "caller-1", now_iso()),  # type: ignore[arg-type]
            TranscriptionFrame(_NoTruth(), "caller-1", now_iso()),  # type: ignore[arg-type]
            TTSTextFrame(None, "word"),  # type: ignore[arg-type]
            TTSTextFrame(42, "word"),  # type: ignore[arg-type]
            FunctionCallInProgressFrame(
                function_name=None,  # type: ignore[arg-type]
                tool_call_id=None,  # type: ignore[arg-type]
                arguments=_Unprintable(),
            ),
            FunctionCallResultFrame(
                function_name="f",
                tool_call_id=None,  # type: ignore[arg-type]
                arguments=None,
                result={(1, 2): _Unprintable()},
            ),
        ]
        for frame in hostile:
            await d.push_frame(frame)
        await d.user_turn("still here")
        await d.speak("Yes")

    with caplog.at_level(logging.ERROR, logger="pipecat_roark_otel"):
        call, _ = await driven_call(exporter, roark, script)
    ended = call["ended"]
    assert turns(ended) == [("user", "still here"), ("assistant", "Yes")]
    assert [(t["kind"], t["toolCallId"]) for t in ended["toolCalls"]] == [
        ("tool_call", ""),
        ("tool_result", ""),
    ]
    guard_logs = [r for r in caplog.records if "internal error in on_push_frame" in r.getMessage()]
    assert len(guard_logs) == 1  # two failures, one log line
    assert _errors.dropped[key] - drops_before == 2  # both counted
