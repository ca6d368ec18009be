"""The span exporter that delivers the call record to Roark."""

from __future__ import annotations

from ._exporter import RoarkSpanExporter

__all__ = ["RoarkSpanExporter"]
