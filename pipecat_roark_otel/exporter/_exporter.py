"""RoarkSpanExporter: select our spans, translate, hand off to the durable outbox, return."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import httpx
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from .. import _errors
from ..config import RoarkSettings, resolve_settings
from ._engine import Engine, engine_for
from ._translate import is_ours, span_call_id, translate


def _report_trimmed(call_id: str) -> None:
    """Span limits cut a record the observer could not route around: say so, count it."""
    _errors.count_drop("trimmed_by_span_limits")
    if _errors.should_log("trimmed_by_span_limits"):
        _errors.logger.warning(
            "Span limits dropped attributes of a call record (call %s) before "
            "RoarkSpanExporter saw them: "
            "Roark's copy is incomplete. Put this exporter on the observer's tracer provider "
            "or pass RoarkObserver(exporter=...) so Roark's copy takes its own, unlimited path.",
            call_id,
        )


class RoarkSpanExporter(SpanExporter):
    """Turns the call record into Roark webhooks, through an outbox on disk.

    ``export()`` never touches the network: it writes the call's items to the
    spool and returns, and a background thread delivers them in per-call order.
    Spans that are not ours (or are the trace backend's copy of a call that
    reached Roark by its own path) are skipped at the cost of one attribute check.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings: RoarkSettings = resolve_settings(
            api_key=api_key, base_url=base_url, spool_dir=spool_dir
        )
        self._engine: Engine = engine_for(self.settings, transport=transport)
        self._shut_down = False

    @property
    def engine(self) -> Engine:
        return self._engine

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shut_down:
            return SpanExportResult.FAILURE
        for span in spans:
            if not is_ours(span):
                continue
            with _errors.guard("export"):
                try:
                    item = translate(span)
                except ValueError as exc:  # a number out of range: hostile or broken input
                    self._engine.reject(span_call_id(span), exc)
                    continue
                if span.dropped_attributes or any(e.dropped_attributes for e in span.events):
                    _report_trimmed(item.call_id if item else "unknown: its id was dropped")
                if item is not None:
                    self._engine.put_item(item)
        return SpanExportResult.SUCCESS

    def stats(self) -> dict[str, Any]:
        """Delivered, retried, dead-lettered, dropped by reason, outbox depth and the age in
        seconds of the oldest undelivered item (shared by exporters of one destination)."""
        return self._engine.stats()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Wait until everything handed over is delivered (or the deadline)."""
        return self._engine.force_flush(timeout_millis / 1000)

    def shutdown(self) -> None:
        """Deliver what can be delivered shortly; the rest stays on disk for the next start."""
        if self._shut_down:
            return
        self._shut_down = True
        self._engine.shutdown(5.0)
