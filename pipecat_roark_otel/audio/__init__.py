"""The call's stereo recording: from observed frames by default, or a spliced processor."""

from __future__ import annotations

from ._chunks import DEFAULT_CHUNK_BYTES
from ._otlp import OTLPRecordingTarget
from ._processor import RoarkAudioRecorder
from ._recorder import ObservedRecorder

__all__ = ["DEFAULT_CHUNK_BYTES", "OTLPRecordingTarget", "ObservedRecorder", "RoarkAudioRecorder"]
