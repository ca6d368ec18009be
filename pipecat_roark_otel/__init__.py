"""OpenTelemetry-native bridge between Pipecat voice agents and Roark."""

from __future__ import annotations

from ._version import __version__
from .audio import RoarkAudioRecorder
from .observer import RoarkObserver

__all__ = ["RoarkAudioRecorder", "RoarkObserver", "__version__"]
