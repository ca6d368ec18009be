"""The companion recorder that streams the call's stereo recording to Roark."""

from __future__ import annotations

from ._otlp import OTLPRecordingTarget
from ._recorder import DEFAULT_CHUNK_BYTES, RoarkAudioRecorder

__all__ = ["DEFAULT_CHUNK_BYTES", "OTLPRecordingTarget", "RoarkAudioRecorder"]
