"""Local Roark: a faithful local implementation of Roark's Pipecat ingestion contract."""

from __future__ import annotations

from ._faults import Faults
from ._local import LocalRoark

__all__ = ["Faults", "LocalRoark"]
