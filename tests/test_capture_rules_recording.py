"""Rules 11–15 (recording), docs/CAPTURE_RULES.md: each test fails if its rule breaks."""

from __future__ import annotations

import asyncio

import pytest
from pipecat.frames.frames import (
    CancelTaskFrame,
    Frame,
    StartFrame,
)
from pipecat.processors.audio.audio_buffer_processor import AudioBufferProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from pipecat_roark_otel import RoarkObserver, _compat
from pipecat_roark_otel.audio import _source as audio_source
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter
from pipecat_roark_otel.simulation import (
    Script,
    SimulatedOutputTransport,
    run_simulated_call,
)

from .support.capture import (
    E2E,
    GREETING,
    GREETING_WORD_S,
    RATE,
    Driver,
    audible,
    driven_call,
    greet,
    pipeline_task,
    read_call,
    run,
    stereo,
    turns,
)


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
    monkeypatch.setattr(audio_source, "AUDIO_HANDLER_TIMEOUT_S", 0.5)
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
