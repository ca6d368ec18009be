"""Keep call content (transcripts, tool payloads, prompts) out of third-party backends."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.util.types import Attributes, AttributeValue

from .. import semconv as sc
from ._translate import from_us


def _strip(attributes: Attributes, names: frozenset[str]) -> dict[str, AttributeValue] | None:
    if attributes is None:
        return None
    return {k: v for k, v in attributes.items() if k not in names and not sc.is_part_of(k, names)}


def strip_content(
    span: ReadableSpan, names: frozenset[str] = sc.CONTENT_ATTRIBUTES
) -> ReadableSpan:
    """A copy of a span without content attributes, on the span and its events."""
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


# What Pipecat's own service spans (``pipecat`` tracers) carry of the conversation:
# STT transcripts, LLM context and output, TTS text, system instructions.
PIPECAT_CONTENT_ATTRIBUTES = frozenset(
    {
        "text",
        "transcript",
        "input",
        "output",
        "text_output",
        "user_id",
        "gen_ai.system_instructions",
    }
)


def _is_pipecat(span: ReadableSpan) -> bool:
    scope = span.instrumentation_scope
    return scope is not None and scope.name.split(".")[0] == "pipecat"


class ContentFilteringSpanExporter(SpanExporter):
    """Wraps another exporter (OTLP to Jaeger, Honeycomb…) so it never sees call content.

    Strips our content attributes from our spans and, unless told otherwise,
    Pipecat's from its own spans. Roark's exporter still gets the full call: put
    this wrapper only around the others.
    """

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        attributes: Collection[str] = sc.CONTENT_ATTRIBUTES,
        pipecat_attributes: Collection[str] = PIPECAT_CONTENT_ATTRIBUTES,
    ) -> None:
        self._exporter = exporter
        self._names = frozenset(attributes)
        self._pipecat_names = frozenset(pipecat_attributes)

    @property
    def exporter(self) -> SpanExporter:
        """The wrapped exporter."""
        return self._exporter

    def _filtered(self, span: ReadableSpan) -> ReadableSpan:
        if from_us(span):
            return strip_content(span, self._names)
        if self._pipecat_names and _is_pipecat(span):
            return strip_content(span, self._pipecat_names)
        return span

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._exporter.export([self._filtered(s) for s in spans])

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._exporter.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self._exporter.shutdown()
