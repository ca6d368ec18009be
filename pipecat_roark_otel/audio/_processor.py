"""The spliced recorder (compatibility): an AudioBufferProcessor that arms on its StartFrame."""

from __future__ import annotations

from typing import Any

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InputAudioRawFrame,
    OutputAudioRawFrame,
    StartFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection

from .._compat import (
    PositionTrackingRecorder,
    has_buffer_event_handlers,
    is_recording,
    output_sample_rate,
    start_recording,
)
from ._chunks import DEFAULT_CHUNK_BYTES
from ._recorder import ObservedRecorder
from ._timeline import RecordingTimeline


class RoarkAudioRecorder(PositionTrackingRecorder):
    """Stereo (L = user, R = bot), ~256 KiB per track in each chunk, rate from the pipeline.

    Splice it after ``transport.output()`` so it hears the bot as played. Once it is
    in a pipeline, the observer leaves the recording to it.

    It records with the observer's own recorder (batched placement and resampling) and
    hands each chunk to its ``on_audio_data`` handlers. Only where that cannot serve
    (mono, ``buffer_size=0``, turn audio, or a handler on ``on_track_audio_data`` or a
    turn-audio event when recording starts) does Pipecat's ``AudioBufferProcessor``
    record, frame by frame, with its buffers. Recording our way, the audio frames it
    records are pushed on but not reported to observers as processed by it.
    """

    def __init__(
        self,
        *,
        sample_rate: int | None = None,
        num_channels: int = 2,
        buffer_size: int = DEFAULT_CHUNK_BYTES,
        **kwargs: Any,
    ) -> None:
        # Direct mode: frames are handled in the pusher's task, not through another queue
        # hop, which is most of what a pass-through processor costs per frame.
        kwargs.setdefault("enable_direct_mode", True)
        super().__init__(
            sample_rate=sample_rate, num_channels=num_channels, buffer_size=buffer_size, **kwargs
        )
        self._chunk_bytes = num_channels * buffer_size
        # Capture rule 15: Pipecat < 1.10 learns its rate only from the StartFrame it handles.
        self._rate = sample_rate or 0
        self._can_record_observed = (
            num_channels == 2 and buffer_size > 0 and not kwargs.get("enable_turn_audio")
        )
        self._observed: ObservedRecorder | None = None  # recording this way, this recording
        self._ready: list[tuple[bytes, int, int]] = []  # its chunks, not yet handed out
        # One per track: Pipecat aligns the two only loosely while both are quiet.
        self.user_timeline = RecordingTimeline()
        self.bot_timeline = RecordingTimeline()
        self.spliced = False
        self._clock: Any = None  # the pipeline's: frames only flow once it is set up

    async def setup(self, setup: Any) -> None:
        # Pipecat sets up every processor of a pipeline before its StartFrame flows.
        await super().setup(setup)
        self._clock = self.get_clock()
        self.spliced = True

    async def start_recording(self) -> None:
        if is_recording(self):
            return
        self._observed = None
        if self._can_record_observed and not has_buffer_event_handlers(self):
            recorder = ObservedRecorder(chunk_bytes=self._chunk_bytes)
            recorder.add_listener(self._keep)
            recorder.start(self.sample_rate or self._rate)
            self.user_timeline = recorder.user_timeline
            self.bot_timeline = recorder.bot_timeline
            self._observed = recorder
        else:
            self.user_timeline = RecordingTimeline()
            self.bot_timeline = RecordingTimeline()
        await super().start_recording()

    async def stop_recording(self) -> None:
        recorder = self._observed
        if recorder is not None and recorder.recording:
            # The tail goes out before on_recording_stopped, as Pipecat's own does.
            recorder.stop()
            await self._hand_out()
        await super().stop_recording()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        recorder = self._observed
        if recorder is not None and recorder.recording:
            # Per audio frame: recorded and pushed on. Not reported to observers as processed
            # (~5 us/frame through Pipecat's queue per observer); they see the push.
            if isinstance(frame, InputAudioRawFrame):
                clock_ns = self._clock.get_time()
                recorder.user_audio(frame.audio, frame.sample_rate, frame.num_channels, clock_ns)
            elif isinstance(frame, OutputAudioRawFrame):
                clock_ns = self._clock.get_time()
                recorder.bot_audio(frame.audio, frame.sample_rate, frame.num_channels, clock_ns)
            else:
                await self._other_frame(recorder, frame, direction)
                return
            if self._ready:
                await self._hand_out()
            await self.push_frame(frame, direction)
            return
        # Capture rule 11: armed inline, before any greeting audio can reach us.
        if isinstance(frame, StartFrame) and not is_recording(self):
            self._rate = self._rate or output_sample_rate(frame)
            await start_recording(self)
        if not isinstance(frame, (InputAudioRawFrame, OutputAudioRawFrame)):
            await super().process_frame(frame, direction)
            return
        bot = isinstance(frame, OutputAudioRawFrame)
        before = self.position_ms(bot=bot)
        await super().process_frame(frame, direction)
        after = self.position_ms(bot=bot)
        if after > before and is_recording(self):
            # Capture rule 13: offsets on the recording's own clock, not the wall's.
            # The audio just written ends now; it started one frame's length ago.
            bytes_per_s = 2 * frame.num_channels * frame.sample_rate
            duration_ms = min(after - before, len(frame.audio) * 1000 / bytes_per_s)
            timeline = self.bot_timeline if bot else self.user_timeline
            timeline.observe(
                self.get_clock().get_time() - int(duration_ms * 1_000_000), after - duration_ms
            )

    async def _other_frame(
        self, recorder: ObservedRecorder, frame: Frame, direction: FrameDirection
    ) -> None:
        """Speaking state to our recorder; Pipecat's handling of the rest (start, stop, end)."""
        if isinstance(frame, (UserStartedSpeakingFrame, UserStoppedSpeakingFrame)):
            recorder.user_speaking(isinstance(frame, UserStartedSpeakingFrame))
        elif isinstance(frame, (BotStartedSpeakingFrame, BotStoppedSpeakingFrame)):
            recorder.bot_speaking(isinstance(frame, BotStartedSpeakingFrame))
        await super().process_frame(frame, direction)

    def _keep(self, pcm: bytes, sample_rate: int, num_channels: int) -> None:
        self._ready.append((pcm, sample_rate, num_channels))

    async def _hand_out(self) -> None:
        ready, self._ready = self._ready, []
        for pcm, sample_rate, num_channels in ready:
            await self._call_event_handler("on_audio_data", pcm, sample_rate, num_channels)
