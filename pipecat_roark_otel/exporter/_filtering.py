"""Keep call content (transcripts, tool payloads, prompts) out of third-party backends."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.util.types import Attributes, AttributeValue

from .. import semconv as sc
from ._translate import is_ours


def _strip(attributes: Attributes, names: Collection[str]) -> dict[str, AttributeValue] | None:
    if attributes is None:
        return None
    return {k: v for k, v in attributes.items() if k not in names}


def strip_content(
    span: ReadableSpan, names: Collection[str] = sc.CONTENT_ATTRIBUTES
) -> ReadableSpan:
    """A copy of one of our spans without content attributes, on the span and its events."""
    events = [Event(e.name, _strip(e.attributes, names), e.timestamp) for e in span.events]
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=_strip(span.attributes, names),
        events=events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class ContentFilteringSpanExporter(SpanExporter):
    """Wraps another exporter (OTLP to Jaeger, Honeycomb…) so it never sees call content.

    Roark's exporter still gets the full call: put this wrapper only around the others.
    """

    def __init__(
        self, exporter: SpanExporter, *, attributes: Collection[str] = sc.CONTENT_ATTRIBUTES
    ) -> None:
        self._exporter = exporter
        self._names = frozenset(attributes)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._exporter.export(
            [strip_content(s, self._names) if is_ours(s) else s for s in spans]
        )

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._exporter.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self._exporter.shutdown()
