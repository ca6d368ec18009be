"""The recording issue, end to end: real PipelineTasks record, the local Roark assembles the WAV.

Every test compares the WAV Roark built from the uploaded chunks with the PCM the
recorder handed out in-process: byte for byte. The recording tests run three ways: with
the default recorder (from observed frames, nothing in the pipeline), with
``observer.audio_processor`` spliced after the output transport, and with it spliced and
an ``on_track_audio_data`` handler attached (Pipecat's own buffers record then).
"""

from __future__ import annotations

import asyncio
import io
import math
import struct
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from pipecat.frames.frames import (
    EndTaskFrame,
    Frame,
    InputAudioRawFrame,
    StartFrame,
    TTSAudioRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.audio.audio_buffer_processor import AudioBufferProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_transport import TransportParams

from pipecat_roark_otel import RoarkObserver
from pipecat_roark_otel import semconv as sc
from pipecat_roark_otel.audio import DEFAULT_CHUNK_BYTES, RoarkAudioRecorder
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter
from pipecat_roark_otel.simulation import (
    DEFAULT_SCRIPT,
    INPUT_RATE,
    Exchange,
    Script,
    SimulatedCall,
    SimulatedOutputTransport,
)
from pipecat_roark_otel.simulation import run_simulated_call as _run_simulated_call

from .conftest import Otel
from .support.capture import run

pytestmark = pytest.mark.e2e

BOT, USER = 1, 0  # stereo channels: L = user, R = bot
BLOCK_MS = 10
VOICED = 1000  # the simulation's tones peak at 6000; its silence is exact zeros
TOLERANCE_MS = 100
GREETING_WORDS = len((DEFAULT_SCRIPT.greeting or "").split())

# Greeting + one exchange: short enough to run in real time.
SHORT = Script(
    greeting="Hello there friend",
    exchanges=(Exchange(user="Check my order please", bot="Sure thing done"),),
)


# -- reading the recording back --------------------------------------------------------------


@dataclass(frozen=True)
class Wav:
    rate: int
    channels: int
    sample_width: int
    pcm: bytes = field(repr=False)

    @classmethod
    def parse(cls, data: bytes) -> Wav:
        with wave.open(io.BytesIO(data)) as w:
            return cls(w.getframerate(), w.getnchannels(), w.getsampwidth(), data[44:])

    @property
    def duration_ms(self) -> float:
        return len(self.pcm) / (2 * self.channels) * 1000 / self.rate

    def voiced(self, channel: int) -> list[bool]:
        """One flag per 10 ms block of ``channel``: does it carry a tone."""
        samples = struct.unpack(f"<{len(self.pcm) // 2}h", self.pcm)[channel :: self.channels]
        n = self.rate * BLOCK_MS // 1000
        return [max(map(abs, samples[i : i + n])) > VOICED for i in range(0, len(samples), n)]

    def runs_ms(self, channel: int) -> list[tuple[int, int]]:
        """Voiced stretches of ``channel`` as (start, end) ms; gaps under 50 ms are bridged."""
        runs: list[tuple[int, int]] = []
        for i, on in enumerate(self.voiced(channel)):
            if not on:
                continue
            start = i * BLOCK_MS
            if runs and start - runs[-1][1] <= 50:
                runs[-1] = (runs[-1][0], start + BLOCK_MS)
            else:
                runs.append((start, start + BLOCK_MS))
        return runs

    def voiced_ms(self, channel: int, start_ms: float = 0, end_ms: float | None = None) -> int:
        """How long ``channel`` carries a tone between ``start_ms`` and ``end_ms``."""
        flags = self.voiced(channel)
        lo = max(0, int(start_ms // BLOCK_MS))
        hi = len(flags) if end_ms is None else min(len(flags), int(end_ms // BLOCK_MS) + 1)
        return sum(flags[lo:hi]) * BLOCK_MS


def record_output(processor: AudioBufferProcessor) -> list[bytes]:
    """The recorder's own output, chunk by chunk, as its ``on_audio_data`` handlers get it."""
    chunks: list[bytes] = []

    async def keep(_p: object, audio: bytes, _rate: int, _channels: int) -> None:
        chunks.append(bytes(audio))

    processor.add_event_handler("on_audio_data", keep)
    return chunks


def observed_output(observer: RoarkObserver) -> list[bytes]:
    """The default recorder's output, chunk by chunk, as its listeners get it."""
    chunks: list[bytes] = []
    observer.recording.add_listener(lambda pcm, _rate, _channels: chunks.append(pcm))
    return chunks


def tracks_wanted(processor: AudioBufferProcessor) -> None:
    """A handler only Pipecat's per-track buffers can serve: the spliced recorder uses them."""

    async def ignore(_p: object, _user: bytes, _bot: bytes, _rate: int, _channels: int) -> None:
        return None

    processor.add_event_handler("on_track_audio_data", ignore)


MODES = ["observed", "spliced", "spliced_pipecat"]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    return mode


@dataclass
class Delivered:
    call: dict[str, Any]
    wav: Wav
    recorded: list[bytes]
    requests: list[dict[str, Any]]

    @property
    def ended(self) -> dict[str, Any]:
        ended: dict[str, Any] = self.call["ended"]
        return ended

    def of(self, endpoint: str, status: int | None = 200) -> list[dict[str, Any]]:
        return [
            r
            for r in self.requests
            if r["endpoint"] == endpoint and (status is None or r["status"] == status)
        ]

    def assert_byte_exact(self) -> None:
        """Roark's chunks, in index order, are the recorder's output: no gap, repeat or swap."""
        assert self.recorded, "the recorder produced no audio"
        assert self.call["missing_chunks"] == []
        assert self.call["duplicates"]["chunks"] == {}
        assert self.call["duplicates"]["chunks_replaced"] == {}
        assert self.call["chunks"] == {i: len(c) for i, c in enumerate(self.recorded)}
        assert self.wav.pcm == b"".join(self.recorded)


async def run_call(
    observer: RoarkObserver,
    *,
    mode: str = "observed",
    script: Script = DEFAULT_SCRIPT,
    **kwargs: Any,
) -> list[bytes]:
    """One simulated call; the output of the recorder ``mode`` names (the other stays off)."""
    observed = observed_output(observer)
    if mode == "observed":
        await _run_simulated_call(observer, script=script, **kwargs)
        return observed
    spliced = record_output(observer.audio_processor)
    if mode == "spliced_pipecat":
        tracks_wanted(observer.audio_processor)
    await _run_simulated_call(observer, script=script, recorder=observer.audio_processor, **kwargs)
    assert observed == [], "a spliced recorder records alone: the call is never recorded twice"
    return spliced


def deliver(
    exporter: RoarkSpanExporter,
    roark: LocalRoark,
    observer: RoarkObserver,
    recorded: list[bytes],
    timeout: float = 20.0,
) -> Delivered:
    assert exporter.force_flush(int(timeout * 1000))
    call_id = observer.conversation_id
    call = roark.wait_for_call_ended(call_id, timeout=timeout)
    wav = roark.wav_bytes(call_id)
    assert wav is not None, f"no WAV for {call_id}: {call['flags']}"
    return Delivered(call, Wav.parse(wav), recorded, roark.requests(call_id))


def call_span(otel: Otel, call_id: str) -> Any:
    spans = [
        s
        for s in otel.spans()
        if s.name == sc.SPAN_CALL and (s.attributes or {}).get(sc.CONVERSATION_ID) == call_id
    ]
    assert len(spans) == 1, [s.name for s in otel.spans()]
    return spans[0]


def greeting_is_recorded(wav: Wav, words: int) -> None:
    """The bot's greeting plays before the caller says anything, and all of it is there."""
    user_runs, bot_runs = wav.runs_ms(USER), wav.runs_ms(BOT)
    assert bot_runs and user_runs
    first_user_ms = user_runs[0][0]
    assert bot_runs[0][0] < first_user_ms
    greeting_ms = wav.voiced_ms(BOT, 0, first_user_ms)
    assert greeting_ms >= 0.9 * words * DEFAULT_SCRIPT.word_s * 1000


# -- a whole call ----------------------------------------------------------------------------


async def test_call_recording_is_byte_exact_and_keeps_the_greeting(
    mode: str, exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    """Greeting, a tool call, several turns, an interruption; the WAV is the recorder's PCM."""
    observer = RoarkObserver(agent_id="a")
    recorded = await run_call(observer, mode=mode)
    got = deliver(exporter, roark, observer, recorded)

    got.assert_byte_exact()
    assert (got.wav.rate, got.wav.channels, got.wav.sample_width) == (24_000, 2, 2)
    # How many chunks there are depends on wall-clock padding; that the tail was flushed
    # does not: the last line the bot spoke is in the WAV (checked below, with the offsets).

    # One presign and one accepted PUT per chunk (a PUT with an auth header or another
    # content type than audio/pcm is refused by the local Roark); call-ended comes last.
    indices = list(range(len(recorded)))
    assert [r["chunkIndex"] for r in got.of("presign")] == indices
    assert [r["chunkIndex"] for r in got.of("upload")] == indices
    assert got.of("upload", status=None) == got.of("upload")
    assert got.requests[-1]["event"] == "call-ended"
    assert got.ended["recordingSampleRate"] == 24_000
    assert got.ended["recordingNumChannels"] == 2

    greeting_is_recorded(got.wav, GREETING_WORDS)
    # The interrupted reply was cut: far less bot audio than the script's full lines.
    lines = [DEFAULT_SCRIPT.greeting or ""] + [e.bot for e in DEFAULT_SCRIPT.exchanges]
    all_words = sum(len(line.split()) for line in lines)
    interrupted = DEFAULT_SCRIPT.exchanges[1]
    assert interrupted.interrupt_after_words is not None
    cut = len(interrupted.bot.split()) - interrupted.interrupt_after_words
    bot_ms = got.wav.voiced_ms(BOT)
    word_ms = DEFAULT_SCRIPT.word_s * 1000
    assert 0.9 * (all_words - cut) * word_ms <= bot_ms < (all_words - cut / 2) * word_ms

    # Offsets: in order, inside the audio.
    duration = got.wav.duration_ms
    turns = got.ended["transcript"]
    assert len(turns) == 7
    onsets = [t["audioOffsetMs"] for t in turns]
    assert onsets == sorted(onsets)
    for turn in turns:
        assert 0 <= turn["audioOffsetMs"] <= turn["endAudioOffsetMs"] <= duration
    for record in got.ended["toolCalls"]:
        assert 0 <= record["audioOffsetMs"] <= duration
    last = turns[-1]
    assert last["role"] == "assistant"
    last_words = len(last["content"].split())
    tail_ms = got.wav.voiced_ms(BOT, last["audioOffsetMs"], last["endAudioOffsetMs"])
    assert tail_ms >= 0.5 * last_words * word_ms, "the tail of the call was not flushed"


@pytest.mark.parametrize("rate", [8_000, 16_000, 24_000, 48_000])
async def test_wav_has_the_pipelines_sample_rate(
    rate: int, mode: str, exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    observer = RoarkObserver(agent_id="a")
    recorded = await run_call(observer, mode=mode, script=SHORT, audio_out_sample_rate=rate)
    got = deliver(exporter, roark, observer, recorded)

    got.assert_byte_exact()
    assert (got.wav.rate, got.wav.channels, got.wav.sample_width) == (rate, 2, 2)
    assert got.ended["recordingSampleRate"] == rate
    assert got.ended["recordingNumChannels"] == 2
    greeting_is_recorded(got.wav, len((SHORT.greeting or "").split()))


async def test_call_span_carries_the_recordings_facts(
    mode: str, exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    observer = RoarkObserver(agent_id="a")
    recorded = await run_call(observer, mode=mode, audio_out_sample_rate=48_000)
    got = deliver(exporter, roark, observer, recorded)
    got.assert_byte_exact()

    attrs = call_span(otel, observer.conversation_id).attributes
    assert attrs[sc.RECORDING_CHUNKS] == len(got.of("upload")) == len(got.call["chunks"]) >= 2
    assert attrs[sc.RECORDING_BYTES] == len(got.wav.pcm)
    assert attrs[sc.RECORDING_SAMPLE_RATE] == got.wav.rate == 48_000
    assert attrs[sc.RECORDING_CHANNELS] == got.wav.channels == 2
    assert attrs[sc.RECORDING_UPLOAD_FAILURES] == 0
    assert got.ended["recordingSampleRate"] == attrs[sc.RECORDING_SAMPLE_RATE]
    assert got.ended["recordingNumChannels"] == attrs[sc.RECORDING_CHANNELS]


async def test_record_audio_off_means_no_recording(
    exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    """``record_audio=False``: no chunks, no recording fields; the call itself still arrives."""
    observer = RoarkObserver(agent_id="a", record_audio=False)
    recorded = observed_output(observer)
    sim = SimulatedCall(SHORT)
    task = PipelineTask(
        Pipeline(sim.processors(None)),
        params=PipelineParams(audio_out_sample_rate=24_000),
        observers=[observer],
    )
    await run(task)
    assert exporter.force_flush(15_000)
    call_id = observer.conversation_id
    call = roark.wait_for_call_ended(call_id, timeout=15)

    assert recorded == []
    ended = call["ended"]
    assert ended["transcript"], "the call itself was captured"
    assert "recordingSampleRate" not in ended and "recordingNumChannels" not in ended
    assert call["chunks"] == {}
    assert roark.wav_bytes(call_id) is None
    endpoints = {r["endpoint"] for r in roark.requests(call_id)}
    assert endpoints == {"webhook"}

    attrs = call_span(otel, call_id).attributes
    assert attrs[sc.RECORDING_CHUNKS] == 0
    assert attrs[sc.RECORDING_BYTES] == 0
    assert sc.RECORDING_SAMPLE_RATE not in attrs and sc.RECORDING_CHANNELS not in attrs


# -- the network misbehaves ------------------------------------------------------------------


class Healer:
    """Undoes a fault once the request log shows it struck: the fault lasts 'for a while'."""

    def __init__(
        self,
        roark: LocalRoark,
        call_id: str,
        struck: Callable[[list[dict[str, Any]]], bool],
        heal: Callable[[], None],
    ) -> None:
        self._stop = threading.Event()
        self.healed = threading.Event()

        def watch() -> None:
            while not self._stop.wait(0.005):
                if struck(roark.requests(call_id)):
                    heal()
                    self.healed.set()
                    return

        self._thread = threading.Thread(target=watch, name="heal-fault", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _presigns_of_chunk_0(requests: list[dict[str, Any]]) -> int:
    return sum(r["endpoint"] == "presign" and r["chunkIndex"] == 0 for r in requests)


FAULTS: dict[str, Callable[[LocalRoark], None]] = {
    "presign-fails": lambda r: r.faults.fail_next(3, 503, endpoint="presign"),
    "presign-429-retry-after": lambda r: r.faults.fail_next(
        1, 429, endpoint="presign", retry_after=1
    ),
    "presign-slow": lambda r: r.faults.set_latency(0.4, endpoint="presign"),
    "presign-dropped": lambda r: r.faults.drop_next(2, endpoint="presign"),
    "presign-without-upload-url": lambda r: r.faults.presign_without_upload_url(2),
    "put-fails": lambda r: r.faults.fail_next(2, 500, endpoint="upload"),
    "put-dropped": lambda r: r.faults.drop_next(1, endpoint="upload"),
    "url-expired": lambda r: r.faults.expire_urls(True),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_recording_is_byte_exact_despite(
    fault: str, exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    call_id = f"rec-{fault}"
    observer = RoarkObserver(agent_id="a", conversation_id=call_id)
    FAULTS[fault](roark)
    healer = None
    if fault == "url-expired":
        # A refused PUT of an expired URL leaves no trace under the call id; the second
        # presign of chunk 0 shows the URL was refused and re-requested.
        healer = Healer(
            roark,
            call_id,
            lambda requests: _presigns_of_chunk_0(requests) >= 2,
            lambda: roark.faults.expire_urls(False),
        )
    try:
        recorded = await run_call(observer, script=SHORT, audio_out_sample_rate=48_000)
        got = deliver(exporter, roark, observer, recorded, timeout=30)
    finally:
        if healer is not None:
            healer.stop()

    assert len(recorded) >= 2
    got.assert_byte_exact()
    # The fault did strike, and each chunk was still accepted exactly once.
    faulted = [r for r in got.requests if r["status"] != 200 or r["fault"]]
    if fault == "presign-slow":
        assert len(got.of("presign")) == len(recorded)
    elif fault in ("url-expired", "presign-without-upload-url"):
        # The answer was a 200 the client could not use: it asked again for a fresh URL.
        assert _presigns_of_chunk_0(got.requests) >= 2
        assert len(got.of("presign")) > len(recorded)
    else:
        assert faulted, got.requests
    assert sorted(r["chunkIndex"] for r in got.of("upload")) == list(range(len(recorded)))
    assert got.requests[-1]["event"] == "call-ended"
    assert got.ended["recordingSampleRate"] == 48_000


async def test_audio_path_never_waits_on_the_network(
    exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    """A 2 s presign does not lengthen the call; the chunks wait and arrive byte-exact."""
    baseline = RoarkObserver(agent_id="a", conversation_id="baseline")
    t0 = time.monotonic()
    await run_call(baseline)
    baseline_s = time.monotonic() - t0
    assert exporter.force_flush(15_000)

    roark.faults.set_latency(2.0, endpoint="presign")
    slow = RoarkObserver(agent_id="a", conversation_id="slow-presign")
    t0 = time.monotonic()
    recorded = await run_call(slow)
    slow_s = time.monotonic() - t0

    # Chunks were produced during the call; a single wait on a presign would add 2 s.
    assert len(recorded) >= 3
    assert slow_s < 1.5 * baseline_s, (slow_s, baseline_s)
    got = deliver(exporter, roark, slow, recorded, timeout=30)
    got.assert_byte_exact()
    assert len(got.of("presign")) == len(recorded)


# -- the user's own recorder -----------------------------------------------------------------


USER_BUFFER = 128 * 1024


class CountingRecorder(AudioBufferProcessor):
    """A user's AudioBufferProcessor that counts how often it is armed."""

    def __init__(self) -> None:
        super().__init__(num_channels=2, buffer_size=USER_BUFFER)
        self.armed = 0

    async def start_recording(self) -> None:
        self.armed += 1
        await super().start_recording()


@pytest.mark.parametrize("pre_armed", [False, True], ids=["not-armed", "pre-armed"])
async def test_bring_your_own_processor(
    pre_armed: bool, exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    processor = CountingRecorder()
    if pre_armed:
        await processor.start_recording()
    observer = RoarkObserver(agent_id="a", audio_buffer_processor=processor)
    assert observer.audio_processor is processor
    recorded = await run_call(observer, mode="spliced")
    got = deliver(exporter, roark, observer, recorded)

    # Armed once: by the user, or by the observer before any audio; never reset.
    assert processor.armed == 1
    got.assert_byte_exact()
    # Used as is: its own 128 KiB (per channel) buffer, not the default's 256 KiB.
    assert len(recorded) >= 3
    assert all(2 * USER_BUFFER <= len(c) < 2 * DEFAULT_CHUNK_BYTES for c in recorded[:-1])
    assert (got.wav.rate, got.wav.channels) == (24_000, 2)
    greeting_is_recorded(got.wav, GREETING_WORDS)


# -- offsets line up with the WAV ------------------------------------------------------------

REAL_TIME = Script(greeting=SHORT.greeting, exchanges=SHORT.exchanges, speed=1.0)


def _channel(role: str) -> int:
    return BOT if role == "assistant" else USER


async def _real_time_call(
    exporter: RoarkSpanExporter, roark: LocalRoark, mode: str
) -> tuple[list[dict[str, Any]], Wav]:
    """``given``: a ``RoarkAudioRecorder`` of the user's, passed as ``audio_buffer_processor``."""
    given = RoarkAudioRecorder() if mode == "given" else None
    observer = RoarkObserver(agent_id="a", audio_buffer_processor=given)
    recorded = await run_call(observer, mode="spliced" if given else mode, script=REAL_TIME)
    got = deliver(exporter, roark, observer, recorded)
    got.assert_byte_exact()
    turns = got.ended["transcript"]
    assert [t["role"] for t in turns] == ["assistant", "user", "assistant"]
    return turns, got.wav


@pytest.mark.parametrize("mode", [*MODES, "given"])
async def test_turn_windows_hold_the_speakers_audio(
    mode: str, exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    """Each turn's offset window (±100 ms) has its speaker's tone on its channel."""
    turns, wav = await _real_time_call(exporter, roark, mode)
    for turn in turns:
        start, end = turn["audioOffsetMs"], turn["endAudioOffsetMs"]
        assert wav.voiced_ms(_channel(turn["role"]), start - TOLERANCE_MS, end + TOLERANCE_MS)


@pytest.mark.parametrize("mode", [*MODES, "given"])
async def test_turn_offsets_line_up_with_the_wav(
    mode: str, exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    """Onset and end of each turn match its speaker's audio in the WAV within 100 ms.

    A starved event loop can hold the caller's next frame back past the 200 ms gap rule,
    so the recording (like Pipecat's AudioBufferProcessor) keeps that pause inside the
    turn: the turn's audio may be several runs. Its onset is the first run's start and
    its end the last run's end.
    """
    turns, wav = await _real_time_call(exporter, roark, mode)
    assert turns[-1]["endAudioOffsetMs"] <= wav.duration_ms + TOLERANCE_MS
    for turn in turns:
        start, end = turn["audioOffsetMs"], turn["endAudioOffsetMs"]
        runs = wav.runs_ms(_channel(turn["role"]))
        onset = min(runs, key=lambda run: abs(run[0] - start))
        assert abs(onset[0] - start) <= TOLERANCE_MS, (turn["role"], start, runs)
        last = min(runs, key=lambda run: abs(run[1] - end))
        assert abs(last[1] - end) <= TOLERANCE_MS + 50, (turn["role"], end, runs)
        # The runs between are this turn's own, not the speaker's next or last turn.
        assert onset[0] <= last[0], (turn["role"], start, end, runs)
        for other in turns:
            if other is not turn and other["role"] == turn["role"]:
                assert not onset[0] <= other["audioOffsetMs"] <= last[1], (turn, other, runs)


# -- the default recorder takes each frame once, where it is heard ----------------------------


def _tone(n: int, rate: int) -> bytes:
    """``n`` samples of a 400 Hz tone (a whole number of periods per 20 ms)."""
    return struct.pack(
        f"<{n}h", *(int(6000 * math.sin(2 * math.pi * 400 * i / rate)) for i in range(n))
    )


class ToneInput(BaseInputTransport):
    """An input transport with ``ticks`` 20 ms frames of tone, through its own audio task."""

    def __init__(self, ticks: int) -> None:
        super().__init__(TransportParams(audio_in_enabled=True))
        self._ticks = ticks
        self._talk: asyncio.Task[None] | None = None

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)
        self._talk = self.create_task(self._run())

    async def _run(self) -> None:
        tone = _tone(INPUT_RATE // 50, INPUT_RATE)
        for i in range(self._ticks):
            await self.push_audio_frame(InputAudioRawFrame(tone, INPUT_RATE, 1))
            await asyncio.sleep(0.005 if i else 0.05)
        await self.push_frame(EndTaskFrame(), FrameDirection.UPSTREAM)

    async def cleanup(self) -> None:
        await super().cleanup()
        if self._talk is not None:
            await self.cancel_task(self._talk)


class BotVoice(FrameProcessor):
    """Says ``seconds`` of tone once the pipeline starts (TTS audio, as a TTS service pushes it)."""

    def __init__(self, seconds: float, rate: int) -> None:
        super().__init__()
        self._seconds = seconds
        self._rate = rate

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            tone = _tone(int(self._rate * self._seconds), self._rate)
            await self.push_frame(TTSAudioRawFrame(tone, self._rate, 1))


class PassAlong(FrameProcessor):
    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


async def test_each_audio_frame_is_recorded_once_where_it_is_heard(
    exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    """Input transport → 3 hops → output transport: every frame is seen 4+ times, kept once."""
    observer = RoarkObserver(agent_id="a")
    recorded = observed_output(observer)
    ticks, bot_s = 60, 0.8
    pipeline = Pipeline(
        [
            ToneInput(ticks),
            PassAlong(),
            PassAlong(),
            BotVoice(bot_s, 24_000),
            PassAlong(),
            SimulatedOutputTransport(speed=4.0),
            PassAlong(),
        ]
    )
    task = PipelineTask(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=INPUT_RATE, audio_out_sample_rate=24_000),
        observers=[observer],
    )
    await run(task)
    got = deliver(exporter, roark, observer, recorded)

    got.assert_byte_exact()
    assert got.wav.rate == 24_000
    # Once each: three more hops would triple a track.
    assert abs(got.wav.voiced_ms(USER) - ticks * 20) <= 40
    assert abs(got.wav.voiced_ms(BOT) - bot_s * 1000) <= 40


class BuffersProbe(FrameProcessor):
    """After the recorders: does each hold audio in Pipecat's buffers mid-call?"""

    def __init__(self, *recorders: AudioBufferProcessor) -> None:
        super().__init__(name="buffers-probe")
        self._recorders = recorders
        self.buffered = [False] * len(recorders)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        for i, recorder in enumerate(self._recorders):
            self.buffered[i] = self.buffered[i] or recorder.has_audio()
        await self.push_frame(frame, direction)


async def test_spliced_recorder_records_the_same_call_either_way(
    exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    """Our batched recorder by default; Pipecat's buffers once a track handler wants them.

    Both spliced in one real-time call: the same speech, run for run. Pipecat's per-frame
    resampler holds back the last ~40 ms of the caller's 16 kHz audio until their next
    frame, after the bot's reply has been placed; so runs agree to 50 ms, onsets loosely.
    """
    observer = RoarkObserver(agent_id="a")
    ours = observer.audio_processor
    pipecats = RoarkAudioRecorder()
    tracks_wanted(pipecats)
    recorded, reference = record_output(ours), record_output(pipecats)
    probe = BuffersProbe(ours, pipecats)
    sim = SimulatedCall(REAL_TIME)
    task = PipelineTask(
        Pipeline([*sim.processors(ours), pipecats, probe]),
        params=PipelineParams(audio_out_sample_rate=24_000),
        observers=[observer],
    )
    await run(task)
    got = deliver(exporter, roark, observer, recorded)

    got.assert_byte_exact()
    # Only the recorder that had to fall back holds audio in Pipecat's buffers.
    assert probe.buffered == [False, True]
    other = Wav(24_000, 2, 2, b"".join(reference))
    assert abs(got.wav.duration_ms - other.duration_ms) <= 3 * TOLERANCE_MS
    for channel in (USER, BOT):
        mine, theirs = got.wav.runs_ms(channel), other.runs_ms(channel)
        assert len(mine) == len(theirs) >= 1
        for (a0, a1), (b0, b1) in zip(mine, theirs, strict=True):
            assert abs((a1 - a0) - (b1 - b0)) <= 5 * BLOCK_MS
            assert abs(a0 - b0) <= 2 * TOLERANCE_MS
