from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipecat_roark_otel import _errors
from pipecat_roark_otel.bridge import BridgeConfig, RoarkBridge
from pipecat_roark_otel.config import resolve_settings
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter
from pipecat_roark_otel.exporter._delivery import DeliveryOptions
from pipecat_roark_otel.exporter._engine import Engine, engine_for

from .otelbin import Jaeger
from .support import auth_headers

_errors.set_raise_internal_errors(True)

_OUR_ENV = ("ROARK_API_KEY", "ROARK_BASE_URL", "ROARK_SPOOL_DIR")


class _Router(SpanProcessor):
    """The process-wide provider's one processor; each test plugs its own behind it.

    Pipecat traces through the global provider, which can be set only once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.targets: list[SpanProcessor] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for target in list(self.targets):
            target.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        for target in list(self.targets):
            target.on_end(span)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return all(t.force_flush(timeout_millis) for t in list(self.targets))

    @property
    def _span_processors(self) -> tuple[SpanProcessor, ...]:
        # Read like the SDK's multi-processor, so the observer finds its exporter behind us.
        return tuple(self.targets)


ROUTER = _Router()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(ROUTER)
trace.set_tracer_provider(PROVIDER)


class Otel:
    """The test's view of the global provider: plug processors, read finished spans."""

    def __init__(self) -> None:
        self.memory = InMemorySpanExporter()
        self.added: list[SpanProcessor] = [SimpleSpanProcessor(self.memory)]
        ROUTER.targets.extend(self.added)

    def add(self, processor: SpanProcessor) -> None:
        self.added.append(processor)
        ROUTER.targets.append(processor)

    def force_flush(self) -> bool:
        return all(p.force_flush() for p in self.added)

    def spans(self) -> list[ReadableSpan]:
        return list(self.memory.get_finished_spans())

    def close(self) -> None:
        for processor in self.added:
            ROUTER.targets.remove(processor)
            processor.shutdown()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name in _OUR_ENV or name.startswith("OTEL_"):
            monkeypatch.delenv(name, raising=False)
    # Nothing a test does may spool into the real user cache.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    _errors.reset()
    yield


@pytest.fixture
def otel() -> Iterator[Otel]:
    o = Otel()
    yield o
    o.close()


@pytest.fixture
def roark(tmp_path: Path) -> Iterator[LocalRoark]:
    with LocalRoark(data_dir=tmp_path / "roark") as server:
        yield server


@pytest.fixture
def api(roark: LocalRoark) -> Iterator[httpx.Client]:
    """A client of the local Roark's API, with its key."""
    with httpx.Client(
        base_url=roark.base_url, headers=auth_headers(roark.api_key), timeout=10
    ) as client:
        yield client


@pytest.fixture
def s3() -> Iterator[httpx.Client]:
    """A bare client for presigned URLs: no auth headers, like an object-store PUT."""
    with httpx.Client(timeout=10) as client:
        yield client


@pytest.fixture
def exporter(roark: LocalRoark, otel: Otel, tmp_path: Path) -> Iterator[RoarkSpanExporter]:
    """A RoarkSpanExporter on the global provider, delivering to the local Roark."""
    exp = RoarkSpanExporter(
        api_key=roark.api_key, base_url=roark.base_url, spool_dir=tmp_path / "spool"
    )
    otel.add(SimpleSpanProcessor(exp))
    yield exp
    exp.shutdown()


TOKEN = "bridge-test-token"

BridgeFactory = Callable[..., RoarkBridge]


@pytest.fixture
def make_bridge(roark: LocalRoark, tmp_path: Path) -> Iterator[BridgeFactory]:
    """Bridges on free ports delivering to the local Roark; stopped (and their engines) after."""
    made: list[tuple[RoarkBridge, Engine]] = []

    def make(
        *, spool: Path | None = None, options: DeliveryOptions | None = None, **config: object
    ) -> RoarkBridge:
        settings = resolve_settings(
            api_key=roark.api_key,
            base_url=roark.base_url,
            spool_dir=spool or tmp_path / f"bridge-spool-{len(made)}",
        )
        engine = engine_for(settings, options=options)
        fields: dict[str, object] = {"grpc_port": 0, "http_port": 0, "token": TOKEN, **config}
        bridge = RoarkBridge(engine, BridgeConfig(**fields)).start()  # type: ignore[arg-type]
        made.append((bridge, engine))
        return bridge

    yield make
    for bridge, engine in made:
        bridge.stop()
        engine.shutdown(2.0)


@pytest.fixture
def jaeger(tmp_path: Path) -> Iterator[Jaeger]:
    """The real Jaeger v2 on loopback ports (tests/otelbin.py); skips without its binary."""
    with Jaeger(tmp_path / "jaeger") as j:
        yield j
