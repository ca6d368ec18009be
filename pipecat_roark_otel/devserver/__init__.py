"""Local Roark: a faithful local implementation of Roark's Pipecat ingestion contract.

It reads docs/CONTRACT.md on its own (``_contract.py``), never through the exporter's models.
"""

from __future__ import annotations

from ._faults import Faults
from ._local import LocalRoark

__all__ = ["Faults", "LocalRoark"]
