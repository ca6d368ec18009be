"""The span exporter that delivers the call record to Roark."""

from __future__ import annotations

from ._exporter import RoarkSpanExporter
from ._filtering import ContentFilteringSpanExporter

__all__ = ["ContentFilteringSpanExporter", "RoarkSpanExporter"]
