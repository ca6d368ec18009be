"""The spliced recorder (compatibility): an AudioBufferProcessor that arms on its StartFrame."""

from __future__ import annotations

from typing import Any

from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame, StartFrame
from pipecat.processors.frame_processor import FrameDirection

from .._compat import PositionTrackingRecorder, is_recording, start_recording
from ._chunks import DEFAULT_CHUNK_BYTES
from ._timeline import RecordingTimeline


class RoarkAudioRecorder(PositionTrackingRecorder):
    """Stereo (L = user, R = bot), ~256 KiB chunks, sample rate from the pipeline.

    Splice it after ``transport.output()`` so it hears the bot as played. Once it is
    in a pipeline, the observer leaves the recording to it.
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
        # One per track: Pipecat aligns the two only loosely while both are quiet.
        self.user_timeline = RecordingTimeline()
        self.bot_timeline = RecordingTimeline()
        self.spliced = False

    async def setup(self, setup: Any) -> None:
        # Pipecat sets up every processor of a pipeline before its StartFrame flows.
        await super().setup(setup)
        self.spliced = True

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        # Capture rule 11: armed inline, before any greeting audio can reach us.
        if isinstance(frame, StartFrame) and not is_recording(self):
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
