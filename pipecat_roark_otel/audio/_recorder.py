"""The companion recorder: an AudioBufferProcessor that arms itself on its own StartFrame."""

from __future__ import annotations

from typing import Any

from pipecat.frames.frames import Frame, StartFrame
from pipecat.processors.audio.audio_buffer_processor import AudioBufferProcessor
from pipecat.processors.frame_processor import FrameDirection

from .._compat import is_recording, start_recording

DEFAULT_CHUNK_BYTES = 256 * 1024


class RoarkAudioRecorder(AudioBufferProcessor):
    """Stereo (L = user, R = bot), ~256 KiB chunks, sample rate from the pipeline.

    Splice it after ``transport.output()`` so it hears the bot as played.
    """

    def __init__(
        self,
        *,
        sample_rate: int | None = None,
        num_channels: int = 2,
        buffer_size: int = DEFAULT_CHUNK_BYTES,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            sample_rate=sample_rate, num_channels=num_channels, buffer_size=buffer_size, **kwargs
        )

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        # Capture rule 11: armed inline, before any greeting audio can reach us.
        if isinstance(frame, StartFrame) and not is_recording(self):
            await start_recording(self)
        await super().process_frame(frame, direction)
