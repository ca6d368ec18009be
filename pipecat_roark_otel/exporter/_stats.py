"""One honest count: what was delivered, retried, dead-lettered or lost, each once, by reason.

The same numbers go out as OpenTelemetry metrics through the global MeterProvider
(observable instruments read ``stats()`` at collection time; nothing on the hot path).
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Final

from opentelemetry import metrics

from .. import _errors
from .. import semconv as sc

# Loss reasons, each an item that will never reach Roark (or reached it incomplete).
AUDIO_DISK_ERROR: Final = "audio_disk_error"  # a chunk could not be stored at all
AUDIO_NO_CALL: Final = "audio_no_call"  # audio before a call that never opened
AUDIO_NO_EXPORTER: Final = "audio_no_exporter"
CHUNK_MISSING: Final = "chunk_missing"  # call-ended went without it after the grace period
SEGMENT_MISSING: Final = "segment_missing"
DEAD_LETTER: Final = "dead_letter"  # Roark refused it for good; kept on disk
INVALID_RECORD: Final = "invalid_record"  # left out of call-ended, or a span rejected
LOCAL_CORRUPTION: Final = "local_corruption"  # a damaged outbox file, set aside
CALL_ORPHANED: Final = "call_orphaned"  # ended by us after the orphan timeout
ORPHANED_WITHOUT_START: Final = "orphaned_without_call_started"

Depth = Callable[[], tuple[int, float | None]]
# Every counter stats() reports, zero until it happens.
COUNTERS: Final = (
    "delivered",
    "retried",
    "dead_lettered",
    "calls_completed",
    "orphaned",
    "segments_missing",
    "chunks_missing",
)


class Stats:
    """Thread-safe counters of one engine; ``lost`` also feeds the process-wide tally."""

    def __init__(self, depth: Depth) -> None:
        self._lock = threading.Lock()  # guards the two counters
        self._counts: Counter[str] = Counter()
        self._lost: Counter[str] = Counter()
        self._depth = depth
        _register(self)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def lost(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self._lost[reason] += n
        _errors.count_drop(reason, n)

    def depth(self) -> tuple[int, float | None]:
        return self._depth()

    def count(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self, *, with_depth: bool = True) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {name: self._counts[name] for name in COUNTERS}
            out["dropped"] = dict(self._lost)
        if with_depth:
            out["outbox_depth"], out["oldest_undelivered_age"] = self._depth()
        return out


# Instruments are made once per process and read every live engine's stats.
_lock = threading.Lock()
_live: weakref.WeakSet[Stats] = weakref.WeakSet()
_instruments: list[object] = []


def _register(stats: Stats) -> None:
    with _lock:
        _live.add(stats)
        if not _instruments:
            _instruments.extend(make_instruments(metrics.get_meter(sc.INSTRUMENTATION_SCOPE)))


def _all() -> list[Stats]:
    with _lock:
        return list(_live)


Callback = Callable[[metrics.CallbackOptions], Iterable[metrics.Observation]]


def make_instruments(
    meter: metrics.Meter, sources: Callable[[], list[Stats]] = _all
) -> list[object]:
    """Observable instruments over ``sources`` (by default every live engine)."""

    def total(name: str) -> Callback:
        def observe(_options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
            yield metrics.Observation(sum(s.count(name) for s in sources()))

        return observe

    def lost(_options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        by_reason: Counter[str] = Counter()
        for s in sources():
            by_reason.update(s.snapshot(with_depth=False)["dropped"])
        for reason, n in sorted(by_reason.items()):
            yield metrics.Observation(n, {sc.LOST_REASON: reason})

    def depth(_options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        yield metrics.Observation(sum(s.depth()[0] for s in sources()))

    def oldest(_options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        ages = [age for s in sources() if (age := s.depth()[1]) is not None]
        yield metrics.Observation(max(ages, default=0.0))

    counter, gauge = meter.create_observable_counter, meter.create_observable_gauge
    return [
        counter(sc.METRIC_DELIVERED, [total("delivered")], "{item}"),
        counter(sc.METRIC_RETRIED, [total("retried")], "{request}"),
        counter(sc.METRIC_DEAD_LETTERED, [total("dead_lettered")], "{item}"),
        counter(sc.METRIC_LOST, [lost], "{item}"),
        gauge(sc.METRIC_DEPTH, [depth], "{item}"),
        gauge(sc.METRIC_OLDEST_AGE, [oldest], "s"),
    ]
