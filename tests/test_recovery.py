"""Recovery without stalls, timed against the local Roark with its faults.

Production backoffs throughout (only the disk rescan is quicker): the point is
what a real deployment does when Roark comes back. Bounds are generous, since
these run on shared machines; each failed before the send gate probed.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from pipecat_roark_otel.config import RoarkSettings
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter._delivery import DeliveryOptions
from pipecat_roark_otel.exporter._engine import Engine

from .support import wait_until
from .test_delivery import KEY, PCM, end, segment, started

pytestmark = pytest.mark.e2e

PRODUCTION = DeliveryOptions(rescan_interval=0.2)
CALLS = [f"r{i}" for i in range(6)]


class Counting(httpx.HTTPTransport):
    """Counts requests as the client sends them (a dropped connection leaves no server log)."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.sent: list[float] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.sent.append(time.monotonic())
        return super().handle_request(request)

    def between(self, t0: float, t1: float) -> int:
        with self.lock:
            return sum(1 for t in self.sent if t0 <= t < t1)

    def count(self) -> int:
        with self.lock:
            return len(self.sent)


class MaxJitter(random.Random):
    """Every backoff takes its full length, so a wait that should not happen shows."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    made: list[Engine] = []

    def make(
        roark: LocalRoark,
        *,
        transport: httpx.BaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> Engine:
        settings = RoarkSettings(api_key=KEY, base_url=roark.base_url, spool_dir=tmp_path / "s")
        engine = Engine(settings, options=PRODUCTION, transport=transport, rng=rng)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.shutdown(2.0)


def put_calls(engine: Engine) -> None:
    for cid in CALLS:
        engine.put_started(cid, started(cid))
        engine.submit_chunk(cid, 0, PCM, sample_rate=16000, num_channels=2)
        engine.put_segment(cid, 0, segment("hello"))
        engine.put_end(cid, end(cid, chunks=1))


def watch(seconds: float) -> None:
    """Let an outage last: the wait is the test, not synchronisation."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        time.sleep(0.05)


def assert_drains_at_once(roark: LocalRoark, engine: Engine, back_at: float) -> None:
    """The first delivery within ~2 s of Roark coming back; the rest right behind it."""
    for cid in CALLS:
        roark.wait_for_call_ended(cid, timeout=60)
    ok = [r["time"] for r in roark.requests() if r["status"] == 200]
    ends = [r["time"] for r in roark.requests() if r.get("event") == "call-ended"]
    first, last = min(ok) - back_at, max(ends) - back_at
    assert first <= 2.5, f"first delivery {first:.1f}s after recovery"
    assert last <= first + 10.0, f"backlog drained {last:.1f}s after recovery"
    assert engine.force_flush(10)


def test_backlog_drains_at_once_after_a_15s_outage_without_a_retry_storm(
    roark: LocalRoark, engines: Callable[..., Engine]
) -> None:
    counting = Counting()
    roark.faults.set_down(True)
    engine = engines(roark, transport=counting)
    put_calls(engine)
    t0 = time.monotonic()
    watch(15.0)
    sent_while_down = counting.between(t0, time.monotonic())
    # Bounded while down: the failures that close the gate, then about one probe a second.
    assert sent_while_down <= 8 + 15 * 1.5, sent_while_down
    # Roark comes back just after a failed probe: the worst moment for a waiting sender.
    seen = counting.count()
    wait_until(lambda: counting.count() > seen, timeout=30)
    watch(0.2)
    roark.faults.set_down(False)
    assert_drains_at_once(roark, engine, time.time())


def test_backlog_drains_at_once_after_a_10s_window_of_401s(
    roark: LocalRoark, engines: Callable[..., Engine]
) -> None:
    counting = Counting()
    roark.set_api_keys(["rk_test_someone_else"])
    engine = engines(roark, transport=counting)
    put_calls(engine)
    wait_until(lambda: engine.stats()["auth_paused"])
    t0 = time.monotonic()
    watch(10.0)
    assert counting.between(t0, time.monotonic()) <= 10 * 1.5, "one probe a second at most"
    roark.set_api_keys([KEY])
    assert_drains_at_once(roark, engine, time.time())


def test_an_expired_upload_url_is_replaced_and_put_at_once(
    roark: LocalRoark, engines: Callable[..., Engine]
) -> None:
    roark.faults.fail_next(2, 403, endpoint="upload")  # two URLs refused (expired)
    engine = engines(roark, rng=MaxJitter())
    engine.put_started("x1", started("x1"))
    assert engine.submit_chunk("x1", 0, PCM, sample_rate=16000, num_channels=2)
    engine.put_segment("x1", 0, segment("hello"))
    engine.put_end("x1", end("x1", chunks=1))
    call = roark.wait_for_call_ended("x1", timeout=20)
    assert call["missing_chunks"] == []
    audio = [r for r in roark.requests("x1") if r["endpoint"] in ("presign", "upload")]
    assert [(r["endpoint"], r["status"]) for r in audio] == [
        ("presign", 200),
        ("upload", 403),
        ("presign", 200),
        ("upload", 403),
        ("presign", 200),
        ("upload", 200),
    ]
    # A fresh URL right after each refusal, and the PUT right after its presign.
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(audio)]
    assert max(gaps) <= 0.4, gaps
