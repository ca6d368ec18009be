"""Which recorder records a call, and its wiring to the chunk hand-off.

The observer's own recorder from the frames it sees (hop-free, the default), the spliced
``roark.audio_processor``, or the user's ``audio_buffer_processor=``: decided at the first
StartFrame, once every processor is set up. A call is never recorded twice.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.util.types import AttributeValue
from pipecat.frames.frames import Frame, StartFrame
from pipecat.observers.base_observer import FrameProcessed, FramePushed
from pipecat.processors.audio.audio_buffer_processor import AudioBufferProcessor
from pipecat.processors.frame_processor import FrameDirection

from .. import _compat, _errors
from .. import semconv as sc
from .._capture import Role
from ._chunks import ChunkSink
from ._processor import RoarkAudioRecorder
from ._recorder import ObservedRecorder
from ._timeline import RecordingTimeline

# Capture rule 14: how long call-ended waits for the recording's last handlers.
AUDIO_HANDLER_TIMEOUT_S = 10.0


class AudioSource:
    """The call's recording source; ``chunks`` numbers what it records for the outbox."""

    def __init__(self, *, record_audio: bool, user_processor: AudioBufferProcessor | None) -> None:
        self.chunks = ChunkSink()
        self.recorder = ObservedRecorder()
        self.recorder.add_buffer_listener(self.chunks.add)
        self.user_processor = user_processor
        if user_processor is not None:
            user_processor.add_event_handler("on_audio_data", self.chunks.on_audio_data)
        # Capture rule 13: our recorders keep timelines; another recorder's sample 0 is
        # anchored at the first audio frame it keeps.
        self.anchored = user_processor is not None and not isinstance(
            user_processor, RoarkAudioRecorder
        )
        self._record_audio = record_audio
        self._companion: RoarkAudioRecorder | None = None
        # Hop-free: None until the first StartFrame decides.
        self.hop_free: bool | None = None
        self._user_source: Any = None
        self._bot_source: Any = None

    @property
    def processor(self) -> AudioBufferProcessor:
        """The user's recorder, else our companion to splice (made on first use)."""
        if self.user_processor is not None:
            return self.user_processor
        if self._companion is None:
            self._companion = RoarkAudioRecorder()
            self._companion.add_event_handler("on_audio_data", self.chunks.on_audio_data)
        return self._companion

    async def arm_user_processor(self) -> None:
        """Capture rule 12: a user's recorder is armed only if it is not already."""
        user = self.user_processor
        if user is not None and not _compat.is_recording(user):
            await _compat.start_recording(user)

    # -- the first StartFrame -------------------------------------------------------

    def start(self, frame: Frame) -> None:
        """Every processor is set up by now: is a recorder of ours spliced?"""
        spliced = self._companion is not None and self._companion.spliced
        self.hop_free = (
            self._record_audio
            and self.user_processor is None
            and not spliced
            and isinstance(frame, StartFrame)
        )
        if self.hop_free:
            assert isinstance(frame, StartFrame)
            self.recorder.start(_compat.output_sample_rate(frame))

    def see_start(self, data: FramePushed) -> None:
        """The transports, as the StartFrame leaves or reaches them."""
        if self._bot_source is None:
            for processor in (data.source, data.destination):
                if _compat.is_output_transport(processor):
                    self._bot_source = processor
        if self._user_source is None and _compat.is_input_transport(data.source):
            self._user_source = data.source

    def see_start_processed(self, data: FrameProcessed) -> None:
        # With first pushes only, the transports show up as processors of the StartFrame.
        processor = data.processor
        if _compat.is_output_transport(processor):
            if self._bot_source is None:
                self._bot_source = processor
        elif self._user_source is None and _compat.is_input_transport(processor):
            self._user_source = processor

    def kept_by_user_processor(self, data: FramePushed | FrameProcessed) -> bool:
        """Whether this audio frame reached the user's recorder while it records."""
        user = self.user_processor
        receiver = data.processor if isinstance(data, FrameProcessed) else data.destination
        return (
            user is not None
            and receiver is user
            and bool(getattr(data.frame, "audio", None))
            and _compat.is_recording(user)
        )

    # -- per audio frame, hop-free ------------------------------------------------------

    def on_user_audio(self, data: FramePushed) -> None:
        # Capture rule 1 for audio: taken once, where it leaves the input transport.
        source = data.source
        if source is not self._user_source:
            if self._user_source is not None or data.direction is not FrameDirection.DOWNSTREAM:
                return
            # No input transport: the processor that makes the user's audio.
            self._user_source = source
        f: Any = data.frame
        self.recorder.user_audio(f.audio, f.sample_rate, f.num_channels, data.timestamp)

    def on_bot_audio(self, data: FramePushed) -> None:
        # Capture rule 7 for audio: what leaves the output transport is what played.
        source = data.source
        if source is not self._bot_source:
            if self._bot_source is not None:
                return
            if _compat.is_output_transport(data.destination):
                self._bot_source = data.destination
                return
            # No output transport: the processor that makes the bot's audio.
            self._bot_source = source
        f: Any = data.frame
        self.recorder.bot_audio(f.audio, f.sample_rate, f.num_channels, data.timestamp)

    # -- capture rule 13 ----------------------------------------------------------

    def timelines(self) -> tuple[RecordingTimeline, RecordingTimeline] | None:
        """(user, bot) timelines of whichever of our recorders records this call."""
        if self.hop_free:
            return self.recorder.user_timeline, self.recorder.bot_timeline
        ours = self._companion or self.user_processor
        if isinstance(ours, RoarkAudioRecorder) and ours.spliced:
            return ours.user_timeline, ours.bot_timeline
        return None

    def position_ms(self, clock_ns: int, track: Role) -> float | None:
        """Where a pipeline-clock moment falls in the recording, on ``track``'s timeline."""
        timelines = self.timelines()
        if timelines is None:
            return None
        user, bot = timelines
        own, other = (user, bot) if track == "user" else (bot, user)
        position = own.position_ms(clock_ns)
        return position if position is not None else other.position_ms(clock_ns)

    def recording_attributes(self) -> dict[str, AttributeValue]:
        """What the call span says about the recording (chunks, bytes, losses, format)."""
        chunks = self.chunks
        attrs: dict[str, AttributeValue] = {
            sc.RECORDING_CHUNKS: chunks.chunks,
            sc.RECORDING_BYTES: chunks.bytes,
            sc.RECORDING_UPLOAD_FAILURES: chunks.failures,
        }
        if chunks.sample_rate is not None:
            attrs[sc.RECORDING_SAMPLE_RATE] = chunks.sample_rate
        if chunks.num_channels is not None:
            attrs[sc.RECORDING_CHANNELS] = chunks.num_channels
        return attrs

    # -- the end ------------------------------------------------------------------

    async def close(self, call_id: str) -> None:
        """Capture rule 14: the tail reaches the outbox before the call span ends."""
        self.recorder.stop()
        processor = self.user_processor or self._companion
        if processor is None:
            self.chunks.close()
            return
        if _compat.is_recording(processor):
            await _compat.stop_recording(processor)
        if not await _compat.wait_for_audio_handlers(processor, AUDIO_HANDLER_TIMEOUT_S):
            _errors.logger.warning(
                "on_audio_data handlers still running after %.0fs; ending call %s without them",
                AUDIO_HANDLER_TIMEOUT_S,
                call_id,
            )
        self.chunks.close()
