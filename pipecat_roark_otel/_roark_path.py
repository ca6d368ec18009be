"""Where Roark's copy of a call goes.

Our spans ride the user's provider to the RoarkSpanExporter on it when nothing
there would drop or trim them. Otherwise (a sampler that does not sample the
call, span limits below what we write, or an exporter the provider does not
carry) Roark's copy takes a private provider, always on and unlimited, that
feeds the same exporter; the user's provider still gets its copy, marked
``roark.backend_copy`` so that the exporter skips it and no call arrives twice.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import Span, Tracer, TracerProvider, set_span_in_context
from opentelemetry.util.types import AttributeValue

from . import _compat, _errors
from . import semconv as sc
from ._attributes import MAX_CUSTOM
from ._capture import Record
from ._record import (
    MAX_EVENT_ATTRIBUTES,
    MAX_SPAN_ATTRIBUTES,
    CallIdentity,
    CallRecord,
    start_call_span,
)
from ._version import __version__
from .audio._chunks import ChunkTarget
from .config import RoarkSettings
from .exporter._exporter import RoarkSpanExporter
from .exporter._filtering import ContentFilteringSpanExporter

UNLIMITED: SpanLimits = SpanLimits(
    max_attributes=SpanLimits.UNSET,
    max_events=SpanLimits.UNSET,
    max_links=SpanLimits.UNSET,
    max_span_attributes=SpanLimits.UNSET,
    max_event_attributes=SpanLimits.UNSET,
    max_link_attributes=SpanLimits.UNSET,
    max_attribute_length=SpanLimits.UNSET,
    max_span_attribute_length=SpanLimits.UNSET,
)
_FLUSH_MS = 5_000


@dataclass(frozen=True, slots=True)
class ProviderView:
    """What a provider does to our spans: its limits and the Roark exporters it feeds."""

    sdk: bool
    limits: SpanLimits
    exporters: Sequence[RoarkSpanExporter] = field(default_factory=tuple)

    def carries(self, exporter: RoarkSpanExporter) -> bool:
        return any(e is exporter for e in self.exporters)


def view(provider: TracerProvider) -> ProviderView:
    if not isinstance(provider, SdkTracerProvider):
        return ProviderView(sdk=False, limits=SpanLimits())
    limits, exporters = _compat.sdk_provider_parts(provider)
    found = []
    for exporter in exporters:
        while isinstance(exporter, ContentFilteringSpanExporter):
            exporter = exporter.exporter
        if isinstance(exporter, RoarkSpanExporter):
            found.append(exporter)
    return ProviderView(sdk=True, limits=limits, exporters=tuple(found))


def count_limits_below_need(limits: SpanLimits) -> list[str]:
    """The count limits in force that would drop part of our record, as ``name=value``."""
    counts = [
        ("max_span_attributes", limits.max_span_attributes, MAX_SPAN_ATTRIBUTES + MAX_CUSTOM),
        ("max_event_attributes", limits.max_event_attributes, MAX_EVENT_ATTRIBUTES),
        ("max_events", limits.max_events, 1),
    ]
    return [f"{name}={value}" for name, value, need in counts if value is not None and value < need]


def length_limited(limits: SpanLimits) -> bool:
    """Any value-length limit: a long text split into parts may outrun an attribute count."""
    return limits.max_attribute_length is not None or limits.max_span_attribute_length is not None


# -- private providers ---------------------------------------------------------------------


class _Borrowed(SpanExporter):
    """The user's exporter behind our private processor: its lifecycle stays the user's."""

    def __init__(self, exporter: RoarkSpanExporter) -> None:
        self.exporter = exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.exporter.export(spans)

    def shutdown(self) -> None:
        pass


def _always_on_provider(exporter: SpanExporter) -> SdkTracerProvider:
    """Constructor arguments throughout: no ``OTEL_*`` variable applies to Roark's path."""
    provider = SdkTracerProvider(
        resource=Resource.create({"service.name": "pipecat-roark-otel"}),
        sampler=ALWAYS_ON,
        span_limits=UNLIMITED,
    )
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter,
            max_queue_size=2048,
            schedule_delay_millis=200,
            max_export_batch_size=512,
            export_timeout_millis=30_000,
        )
    )
    return provider


# Guards both maps: calls open on any thread's loop.
_lock = threading.Lock()
_borrowed: dict[int, tuple[RoarkSpanExporter, SdkTracerProvider]] = {}
_zero_config: dict[RoarkSettings, tuple[RoarkSpanExporter, SdkTracerProvider]] = {}


def _private_for(exporter: RoarkSpanExporter) -> SdkTracerProvider:
    """One always-on provider per exporter; dropped once that exporter is shut down."""
    stale = []
    with _lock:
        for key, (known, provider) in list(_borrowed.items()):
            if known.engine.closed:
                stale.append(provider)
                del _borrowed[key]
        entry = _borrowed.get(id(exporter))
        if entry is None:
            entry = _borrowed[id(exporter)] = (exporter, _always_on_provider(_Borrowed(exporter)))
    for provider in stale:
        provider.shutdown()
    return entry[1]


def _zero_config_path(settings: RoarkSettings) -> tuple[RoarkSpanExporter, SdkTracerProvider]:
    """No SDK provider anywhere: one exporter and provider of our own per destination."""
    with _lock:
        entry = _zero_config.get(settings)
        if entry is None or entry[0].engine.closed:
            exporter = RoarkSpanExporter(
                api_key=settings.api_key, base_url=settings.base_url, spool_dir=settings.spool_dir
            )
            entry = _zero_config[settings] = (exporter, _always_on_provider(exporter))
        return entry


# -- one call --------------------------------------------------------------------------------


class CallWriter:
    """One call, written once per destination: the user's provider, and Roark's own path."""

    def __init__(
        self,
        records: list[CallRecord],
        *,
        private: SdkTracerProvider | None = None,
        target: ChunkTarget | None = None,
    ) -> None:
        self._records = records
        self._private = private
        self.target = target

    @property
    def call_span(self) -> Span:
        """The call span on the user's provider: the one their trace (and a bridge) sees."""
        return self._records[0].call_span

    @property
    def turns(self) -> int:
        return self._records[0].turns

    @property
    def trace_id(self) -> str | None:
        return next((r.trace_id for r in self._records if r.trace_id), None)

    def add(self, records: list[Record]) -> None:
        for record in self._records:
            record.add(records)

    def set_custom(self, attributes: Mapping[str, AttributeValue]) -> bool:
        """The user's attributes on every copy's call span; False once the call has ended."""
        return all([record.set_custom(attributes) for record in self._records])

    def cancel_tool(self, tool_call_id: str, at_ns: int) -> None:
        for record in self._records:
            record.cancel_tool(tool_call_id, at_ns)

    def close(self, attributes: Mapping[str, AttributeValue], *, end_ns: int) -> None:
        for record in self._records:
            record.close(attributes, end_ns=end_ns)

    async def flush(self) -> None:
        """Nobody else flushes a private provider: hand the call to the outbox now."""
        if self._private is not None:
            await asyncio.to_thread(self._private.force_flush, _FLUSH_MS)


def _tracer(provider: TracerProvider, *, backend_copy: bool) -> Tracer:
    attributes = {sc.SCOPE_BACKEND_COPY: True} if backend_copy else None
    return provider.get_tracer(sc.INSTRUMENTATION_SCOPE, __version__, attributes=attributes)


def _sampled(span: Span) -> bool:
    return span.is_recording() and span.get_span_context().trace_flags.sampled


def open_call(
    provider: TracerProvider,
    identity: CallIdentity,
    *,
    exporter: RoarkSpanExporter | None,
    settings: RoarkSettings | None,
    warn_without_exporter: bool = True,
    parent: Context | None,
    start_ns: int,
    started_at: str | None,
    custom: Mapping[str, AttributeValue] | None = None,
) -> CallWriter:
    """Start the call's record on the user's provider, and on Roark's own path if needed.

    ``exporter`` (the observer's argument) wins over one found on ``provider``.
    """
    seen = view(provider)
    target = exporter or (seen.exporters[0] if seen.exporters else None)
    private: SdkTracerProvider | None = None
    if target is None and not seen.sdk and settings is not None:
        target, private = _zero_config_path(settings)
    if target is None:
        if seen.sdk and warn_without_exporter:
            _warn_no_exporter(identity.conversation_id)
        record = CallRecord(
            _tracer(provider, backend_copy=False),
            identity,
            parent=parent,
            start_ns=start_ns,
            started_at=started_at,
            limits=seen.limits,
            custom=custom,
        )
        return CallWriter([record])

    counts = count_limits_below_need(seen.limits) if seen.sdk else []
    on_provider = seen.carries(target) and not counts and not length_limited(seen.limits)
    tracer = _tracer(provider, backend_copy=not on_provider)
    span = start_call_span(
        tracer,
        identity,
        parent=parent,
        start_ns=start_ns,
        started_at=started_at,
        limits=seen.limits,
        custom=custom,
    )
    sampled = _sampled(span)
    alone = on_provider and sampled
    if not alone:
        if seen.sdk:
            _log_backend_cost(provider, sampled, counts)
        # Children too: a sampler that is not parent-based could still take them.
        tracer = _tracer(provider, backend_copy=True)
    user = CallRecord(
        tracer,
        identity,
        call_span=span,
        start_ns=start_ns,
        started_at=started_at,
        limits=seen.limits,
    )
    if alone:
        return CallWriter([user], target=target.engine)
    private = private or _private_for(target)
    # Same trace as the backend's copy, for correlation; a root if that one has no context.
    roark_parent = set_span_in_context(span) if span.get_span_context().is_valid else parent
    roark = CallRecord(
        _tracer(private, backend_copy=False),
        identity,
        parent=roark_parent,
        start_ns=start_ns,
        started_at=started_at,
        limits=UNLIMITED,
        custom=custom,
    )
    return CallWriter([user, roark], private=private, target=target.engine)


def _warn_no_exporter(call_id: str) -> None:
    if _errors.should_log("no_exporter"):
        _errors.logger.warning(
            "No RoarkSpanExporter on the TracerProvider and none passed as "
            "RoarkObserver(exporter=...): this process does not send call %s to Roark "
            "(an OTLP roark-bridge may). Add "
            "provider.add_span_processor(BatchSpanProcessor(RoarkSpanExporter())).",
            call_id,
        )


def _log_backend_cost(provider: TracerProvider, sampled: bool, counts: list[str]) -> None:
    """Capture is never lost silently: say once what each side gets."""
    if not sampled and _errors.should_log("backend_cost:sampler", interval=math.inf):
        sampler = getattr(provider, "sampler", None)
        described = sampler.get_description() if sampler is not None else "unknown"
        _errors.logger.warning(
            "Your tracer provider's sampler (%s) did not sample a call: Roark still receives "
            "every call in full through pipecat-roark-otel's own always-on path, while your "
            "trace backend gets only the calls your sampler keeps. Logged once.",
            described,
        )
    if counts and _errors.should_log("backend_cost:limits", interval=math.inf):
        _errors.logger.warning(
            "Your span limits (%s) are below what a pipecat-roark-otel call record needs: "
            "Roark still receives every call complete and exact through its own path, while "
            "your trace backend gets our spans cut to those limits. Logged once.",
            ", ".join(counts),
        )
