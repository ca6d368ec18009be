"""One honest loss count: each reason pinned, each loss counted once, also as OTel metrics."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from pipecat_roark_otel import _errors
from pipecat_roark_otel import semconv as sc
from pipecat_roark_otel.audio._chunks import ChunkSink
from pipecat_roark_otel.config import RoarkSettings
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter._engine import Engine
from pipecat_roark_otel.exporter._stats import make_instruments

from .support import FAST, wait_until
from .test_delivery import KEY, PCM, end, segment, started


@pytest.fixture
def engine(tmp_path: Path, roark: LocalRoark) -> Iterator[Engine]:
    options = dataclasses.replace(FAST, grace_period=0.2, orphan_timeout=0.4)
    settings = RoarkSettings(api_key=KEY, base_url=roark.base_url, spool_dir=tmp_path / "s")
    made = Engine(settings, options=options)
    yield made
    made.shutdown(2.0)


def missing_chunk(e: Engine, roark: LocalRoark) -> None:
    e.put_started("c", started("c"))
    assert e.submit_chunk("c", 0, PCM, sample_rate=16000, num_channels=2)
    e.put_segment("c", 0, segment("hi"))
    e.put_end("c", end("c", chunks=2))  # chunk 1 never came


def missing_segment(e: Engine, roark: LocalRoark) -> None:
    e.put_started("c", started("c"))
    e.put_segment("c", 1, segment("late half"))
    e.put_end("c", end("c", segments=2))


def refused(e: Engine, roark: LocalRoark) -> None:
    roark.faults.fail_next(1, 422, endpoint="webhook")
    e.put_started("c", started("c"))


def orphaned(e: Engine, roark: LocalRoark) -> None:
    e.put_started("c", started("c"))
    e.put_segment("c", 0, segment("before the crash"))


def orphaned_without_start(e: Engine, roark: LocalRoark) -> None:
    assert e.submit_chunk("c", 0, PCM, sample_rate=16000, num_channels=2)
    e.put_end("c", end("c", chunks=1))


@pytest.mark.parametrize(
    ("scenario", "reason"),
    [
        (missing_chunk, "chunk_missing"),
        (missing_segment, "segment_missing"),
        (refused, "dead_letter"),
        (orphaned, "call_orphaned"),
        (orphaned_without_start, "orphaned_without_call_started"),
    ],
)
def test_each_loss_is_counted_once_under_its_reason(
    engine: Engine,
    roark: LocalRoark,
    scenario: Callable[[Engine, LocalRoark], None],
    reason: str,
) -> None:
    scenario(engine, roark)
    wait_until(lambda: engine.stats()["dropped"] != {})
    assert engine.force_flush(10)
    assert engine.stats()["dropped"] == {reason: 1}
    assert dict(_errors.dropped) == {reason: 1}  # the process-wide tally agrees


def test_audio_without_a_call_or_an_exporter_is_counted_once() -> None:
    early = ChunkSink()
    early.add(b"\x01\x00" * 10, 16000, 1)
    early.close()  # the call never opened
    none = ChunkSink()
    none.attach(None, "c")
    none.add(b"\x01\x00" * 10, 16000, 1)
    assert dict(_errors.dropped) == {"audio_no_call": 1, "audio_no_exporter": 1}
    assert (early.failures, none.failures) == (1, 1)


def test_stats_report_depth_and_age_and_feed_otel_metrics(
    engine: Engine, roark: LocalRoark
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    # By default the instruments sum over every live engine; here, this one's.
    make_instruments(provider.get_meter(sc.INSTRUMENTATION_SCOPE), lambda: [counters])
    counters = engine.delivery.counters
    before = metric_points(reader)
    roark.faults.set_down(True)
    refused(engine, roark)  # kept while Roark is down, then dead-lettered
    wait_until(lambda: engine.stats()["retried"] >= 1)
    assert engine.stats()["outbox_depth"] == 1
    stats = engine.stats()
    assert stats["oldest_undelivered_age"] is not None and stats["oldest_undelivered_age"] >= 0
    roark.faults.set_down(False)
    assert engine.force_flush(10)
    stats = engine.stats()
    assert stats["outbox_depth"] == 0 and stats["oldest_undelivered_age"] is None
    assert stats["dead_lettered"] == 1 and stats["retried"] >= 1
    after = metric_points(reader)

    def grew(name: str, point: Any = ()) -> Any:
        return after[name][point] - before.get(name, {}).get(point, 0)

    assert grew(sc.METRIC_LOST, (("reason", "dead_letter"),)) == 1
    assert {
        k
        for k in after[sc.METRIC_LOST]
        if after[sc.METRIC_LOST][k] != before.get(sc.METRIC_LOST, {}).get(k, 0)
    } == {(("reason", "dead_letter"),)}
    assert grew(sc.METRIC_DEAD_LETTERED) == 1
    assert grew(sc.METRIC_RETRIED) >= 1
    assert () in after[sc.METRIC_DEPTH] and () in after[sc.METRIC_OLDEST_AGE]
    provider.shutdown()


def metric_points(reader: InMemoryMetricReader) -> dict[str, dict[Any, Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, dict[Any, Any]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out[metric.name] = {
                    tuple(sorted((p.attributes or {}).items())): p.value
                    for p in getattr(metric.data, "data_points", ())
                }
    return out
