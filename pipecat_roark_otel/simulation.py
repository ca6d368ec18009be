"""A scripted voice call through a real Pipecat pipeline: no keys, no network, no models.

Scripted STT, LLM and TTS processors emit the frame types real services emit
(speaking edges, final transcriptions, LLM text, TTS words and audio, tool
calls as broadcast pairs), and an output transport plays the audio at a chosen
speed, releasing each TTS word as its audio plays, as a real one does.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    DataFrame,
    EndTaskFrame,
    Frame,
    FunctionCallCancelFrame,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    FunctionCallResultProperties,
    InputAudioRawFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    OutputAudioRawFrame,
    StartFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import LLMTokenUsage
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transcriptions.language import Language
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import TransportParams

INPUT_RATE = 16_000
_TICK_S = 0.02


@dataclass(frozen=True)
class Tool:
    """A tool the scripted LLM calls before it replies.

    ``outcome``: ``"result"`` (returns ``result``), ``"progress"`` (an async tool: a
    progress update, then ``result``), ``"error"`` (its handler raised: Pipecat's
    stand-in result, flagged), ``"cancelled"`` or ``"hangs"`` (never returns).
    """

    name: str
    arguments: Any
    result: Any
    call_id: str
    outcome: Literal["result", "progress", "error", "cancelled", "hangs"] = "result"


@dataclass(frozen=True)
class Exchange:
    """The user says ``user`` (empty for none), then the bot replies ``bot``.

    ``interrupt_after_words`` cuts the reply off once that many words played.
    """

    user: str
    bot: str
    tool: Tool | None = None
    interrupt_after_words: int | None = None
    user_segments: int = 1


@dataclass(frozen=True)
class Script:
    """``*_ttfb_s``: each service's time to first byte, reported as Pipecat services do."""

    exchanges: Sequence[Exchange]
    greeting: str | None = None
    speed: float = 8.0
    word_s: float = 0.3
    user_word_s: float = 0.25
    pause_s: float = 0.2
    stt_ttfb_s: float = 0.15
    llm_ttfb_s: float = 0.35
    tts_ttfb_s: float = 0.2
    prompt_tokens: int = 120


# Completion tokens of an LLM request that only calls a tool.
TOOL_CALL_TOKENS = 16


DEFAULT_SCRIPT = Script(
    greeting="Hello! Thanks for calling Copperline Care. How can I help?",
    exchanges=(
        Exchange(
            user="I'd like to check on my order",
            bot="Sure, let me look that up for you.",
            tool=Tool("lookup_order", {"order_id": "A-1042"}, {"status": "shipped"}, "call_1"),
        ),
        Exchange(
            user="Is it arriving today",
            bot="Your order shipped yesterday and will arrive tomorrow before noon, "
            "and you will get a text message with the tracking link",
            interrupt_after_words=6,
        ),
        Exchange(user="Great thanks", bot="You're welcome. Goodbye!", user_segments=2),
    ),
)


def _tone(n_samples: int, rate: int, freq: float, start: int, channels: int = 1) -> bytes:
    frames = []
    for i in range(n_samples):
        v = int(6000 * math.sin(2 * math.pi * freq * (start + i) / rate))
        frames.extend([v] * channels)
    return struct.pack(f"<{len(frames)}h", *frames)


class _SayFrame(DataFrame):
    """Director → LLM: say this (the greeting)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class _Caller(FrameProcessor):
    """First in the pipeline: ``play()`` runs once the pipeline starts, then ``then`` goes
    upstream (by default the task ends, as a bot ends it). Watches the bot's speaking edges.
    """

    def __init__(self, *, then: type[Frame] | None = EndTaskFrame, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._then = then
        self._task: asyncio.Task[None] | None = None
        self._sample = 0  # of the caller's audio, so its tone runs on across frames
        self.bot_started = asyncio.Event()
        self.bot_stopped = asyncio.Event()
        self.done = asyncio.Event()

    async def play(self) -> None:
        raise NotImplementedError

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
        await self.play()
        self.done.set()
        if self._then is not None:
            # EndTaskFrame asks the task to end; it sends the EndFrame down the pipeline.
            await self.push_frame(self._then(), FrameDirection.UPSTREAM)


class ScriptedSTT(_Caller):
    """The caller: user audio ticks, speaking edges and final transcriptions, on script."""

    def __init__(self, script: Script, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._script = script
        self._words_played = 0

    def can_generate_metrics(self) -> bool:
        return True

    def word_played(self) -> None:
        self._words_played += 1

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self._script.speed)

    async def _audio(self, seconds: float, freq: float) -> None:
        n = int(INPUT_RATE * _TICK_S)
        for _ in range(max(1, round(seconds / _TICK_S))):
            await self.push_frame(
                InputAudioRawFrame(_tone(n, INPUT_RATE, freq, self._sample), INPUT_RATE, 1)
            )
            self._sample += n
            await self._sleep(_TICK_S)

    async def _bot_turn(self) -> None:
        await self.bot_stopped.wait()
        self.bot_stopped.clear()
        self.bot_started.clear()

    async def _user_turn(self, exchange: Exchange) -> None:
        words = exchange.user.split()
        await self.push_frame(UserStartedSpeakingFrame())
        await self._audio(len(words) * self._script.user_word_s, 220.0)
        await self.push_frame(UserStoppedSpeakingFrame())
        await self.start_ttfb_metrics()
        await self._sleep(self._script.stt_ttfb_s)
        await self.stop_ttfb_metrics()
        k = max(1, exchange.user_segments)
        for i in range(k):
            text = " ".join(words[i * len(words) // k : (i + 1) * len(words) // k])
            now = datetime.now(UTC).isoformat()
            frame = TranscriptionFrame(text, "caller-1", now, language=Language.EN_US)
            await self.push_frame(frame)

    async def play(self) -> None:
        script = self._script
        await self._audio(script.pause_s, 0.0)
        if script.greeting:
            await self.push_frame(_SayFrame(script.greeting))
            await self._bot_turn()
        for exchange in script.exchanges:
            await self._audio(script.pause_s, 0.0)
            if exchange.user:
                await self._user_turn(exchange)
            if exchange.interrupt_after_words is not None:
                self._words_played = 0
                await self.bot_started.wait()
                while self._words_played < exchange.interrupt_after_words:
                    await asyncio.sleep(0.005)
                await self.push_frame(UserStartedSpeakingFrame())
                await self.broadcast_interruption()
                await self.bot_stopped.wait()
                await self._audio(0.3, 330.0)
                await self.push_frame(UserStoppedSpeakingFrame())
                self.bot_stopped.clear()
                self.bot_started.clear()
            else:
                await self._bot_turn()
        await self._audio(script.pause_s, 0.0)


class ScriptedLLM(FrameProcessor):
    """Replies with the next scripted line to each user turn; calls the scripted tool first."""

    def __init__(self, script: Script, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._script = script
        self._replies = list(script.exchanges)
        self._segments = 0

    def can_generate_metrics(self) -> bool:
        return True

    async def _first_byte(self) -> None:
        await self.start_ttfb_metrics()
        await asyncio.sleep(self._script.llm_ttfb_s / self._script.speed)
        await self.stop_ttfb_metrics()

    async def _usage(self, completion_tokens: int) -> None:
        prompt = self._script.prompt_tokens
        await self.start_llm_usage_metrics(
            LLMTokenUsage(
                prompt_tokens=prompt,
                completion_tokens=completion_tokens,
                total_tokens=prompt + completion_tokens,
            )
        )

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, _SayFrame):
            await self._reply(frame.text, None)
            return
        await self.push_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame) and self._replies:
            # Reply once the turn's last final segment arrived.
            self._segments += 1
            exchange = self._replies[0]
            if self._segments >= max(1, exchange.user_segments):
                self._segments = 0
                self._replies.pop(0)
                await self._reply(exchange.bot, exchange.tool)

    async def _reply(self, text: str, tool: Tool | None) -> None:
        await self.push_frame(LLMFullResponseStartFrame())
        if tool is not None:
            # One request that calls the tool, a second one that answers with its result.
            await self._first_byte()
            kwargs = {"function_name": tool.name, "tool_call_id": tool.call_id}
            await self.broadcast_frame(
                FunctionCallInProgressFrame, **kwargs, arguments=tool.arguments
            )
            await self._usage(TOOL_CALL_TOKENS)
            await self._settle(tool, kwargs)
        await self._first_byte()
        for i, word in enumerate(text.split()):
            await self.push_frame(LLMTextFrame(word if i == 0 else " " + word))
        await self._usage(len(text.split()))
        await self.push_frame(LLMFullResponseEndFrame())

    async def _settle(self, tool: Tool, kwargs: dict[str, Any]) -> None:
        if tool.outcome == "cancelled":
            await self.broadcast_frame(FunctionCallCancelFrame, **kwargs)
        elif tool.outcome == "hangs":
            return
        else:
            if tool.outcome == "progress":
                update = FunctionCallResultProperties(is_final=False)
                await self.broadcast_frame(
                    FunctionCallResultFrame,
                    **kwargs,
                    arguments=tool.arguments,
                    result={"progress": "working"},
                    properties=update,
                )
                await asyncio.sleep(self._script.llm_ttfb_s / self._script.speed)
            extra: dict[str, Any] = {}
            if tool.outcome == "error" and "error" in FunctionCallResultFrame.__dataclass_fields__:
                extra["error"] = f"Error executing function call [{tool.name}]"
            await self.broadcast_frame(
                FunctionCallResultFrame,
                **kwargs,
                arguments=tool.arguments,
                result=tool.result,
                **extra,
            )


class ScriptedTTS(FrameProcessor):
    """Speaks each LLM response word by word: a TTSTextFrame, then that word's audio."""

    def __init__(self, script: Script, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._script = script
        self._words: list[str] = []
        self._sample = 0
        self._rate = 24_000

    async def setup(self, setup: Any) -> None:
        await super().setup(setup)
        self._rate = int(getattr(setup, "audio_out_sample_rate", 0) or self._rate)

    def can_generate_metrics(self) -> bool:
        return True

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMTextFrame):
            self._words.append(frame.text.strip())
            return
        if isinstance(frame, LLMFullResponseEndFrame):
            await self.push_frame(frame, direction)
            await self._speak()
            return
        await self.push_frame(frame, direction)

    async def _speak(self) -> None:
        words, self._words = self._words, []
        rate = self._rate
        n = int(rate * self._script.word_s)
        await self.start_ttfb_metrics()
        await self.push_frame(TTSStartedFrame())
        await asyncio.sleep(self._script.tts_ttfb_s / self._script.speed)
        await self.stop_ttfb_metrics()
        for word in words:
            await self.push_frame(TTSTextFrame(word, "word"))
            await self.push_frame(TTSAudioRawFrame(_tone(n, rate, 440.0, self._sample), rate, 1))
            self._sample += n
        await self.push_frame(TTSStoppedFrame())


class SimulatedOutputTransport(BaseOutputTransport):
    """Plays audio at ``speed`` times real time and tells the caller which words played."""

    def __init__(
        self, speed: float, on_word_played: Callable[[], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(TransportParams(audio_out_enabled=True), **kwargs)
        self._speed = speed
        self._on_word_played = on_word_played

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        seconds = len(frame.audio) / (2 * frame.num_channels * frame.sample_rate)
        await asyncio.sleep(seconds / self._speed)
        return True

    async def push_frame(
        self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM
    ) -> None:
        await super().push_frame(frame, direction)
        if isinstance(frame, TTSTextFrame) and self._on_word_played is not None:
            # Lets the scripted caller interrupt after N words were heard.
            self._on_word_played()


@dataclass
class SimulatedCall:
    """The processors of one simulated call, in pipeline order around the observer's recorder."""

    script: Script = field(default_factory=lambda: DEFAULT_SCRIPT)
    stt: ScriptedSTT = field(init=False)
    llm: ScriptedLLM = field(init=False)
    tts: ScriptedTTS = field(init=False)
    output: SimulatedOutputTransport = field(init=False)

    def __post_init__(self) -> None:
        self.stt = ScriptedSTT(self.script)
        self.llm = ScriptedLLM(self.script)
        self.tts = ScriptedTTS(self.script)
        self.output = SimulatedOutputTransport(self.script.speed, self.stt.word_played)

    def processors(self, recorder: FrameProcessor | None) -> list[FrameProcessor]:
        procs: list[FrameProcessor] = [self.stt, self.llm, self.tts, self.output]
        if recorder is not None:
            procs.append(recorder)
        return procs


__all__ = [
    "DEFAULT_SCRIPT",
    "TOOL_CALL_TOKENS",
    "Exchange",
    "Script",
    "ScriptedLLM",
    "ScriptedSTT",
    "ScriptedTTS",
    "SimulatedCall",
    "SimulatedOutputTransport",
    "Tool",
]


async def run_simulated_call(
    observer: Any,
    *,
    script: Script | None = None,
    enable_tracing: bool = True,
    conversation_id: str | None = None,
    audio_out_sample_rate: int = 24_000,
    recorder: FrameProcessor | None = None,
) -> SimulatedCall:
    """Run one scripted call through a real ``PipelineTask`` with ``observer`` attached.

    ``recorder`` is spliced after the output transport; without one the observer records.
    """
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.runner import PipelineRunner
    from pipecat.pipeline.task import PipelineParams, PipelineTask

    call = SimulatedCall(script or DEFAULT_SCRIPT)
    task = PipelineTask(
        Pipeline(call.processors(recorder)),
        params=PipelineParams(
            audio_out_sample_rate=audio_out_sample_rate,
            enable_metrics=True,
            enable_usage_metrics=True,
        ),
        observers=[observer],
        enable_tracing=enable_tracing,
        conversation_id=conversation_id,
    )
    runner = PipelineRunner(handle_sigint=False)
    if hasattr(runner, "add_workers"):  # Pipecat >= 1.3: PipelineRunner is a WorkerRunner
        await runner.add_workers(task)
        await runner.run()
    else:
        await runner.run(task)
    return call
