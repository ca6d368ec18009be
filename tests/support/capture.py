"""The capture-rule harness: scripted pipelines, hand-pushed hops, reading a call back.

Shared by tests/test_capture_rules_*.py, one file per section of docs/CAPTURE_RULES.md.
"""

from __future__ import annotations

import array
import asyncio
import io
import itertools
import math
import struct
import time
import wave
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pipecat.frames.frames import (
    EndTaskFrame,
    Frame,
    InputAudioRawFrame,
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
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from pipecat_roark_otel import RoarkObserver
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter
from pipecat_roark_otel.simulation import (
    Exchange,
    Script,
    SimulatedCall,
    SimulatedOutputTransport,
    _Caller,
)

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


class Driver(_Caller):
    """First processor: plays the test's script once started, then asks the task to end."""

    def __init__(self, script: DriverScript, *, then: type[Frame] | None = EndTaskFrame) -> None:
        super().__init__(then=then, name="driver")
        self._script = script
        self.marks: dict[str, float] = {}

    async def play(self) -> None:
        await self._script(self)

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
    exporter: RoarkSpanExporter, roark: LocalRoark, observer: RoarkObserver | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The simulated caller cuts the bot off after three words: (call-ended, words played)."""
    observer = observer or RoarkObserver(agent_id="capture-rules")
    call = SimulatedCall(INTERRUPTED)
    heard = WordsHeard()
    await run(pipeline_task(observer, *call.processors(heard)))
    stored = await read_call(exporter, roark, observer.conversation_id)
    return stored["ended"], heard.words


GREETING = "Hello! Thanks for calling Copperline."
GREETING_WORD_S = 0.15


async def greet(d: Driver) -> None:
    """The bot speaks first, the moment the pipeline starts."""
    await d.speak(GREETING, word_s=GREETING_WORD_S)
