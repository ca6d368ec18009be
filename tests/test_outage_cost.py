"""What an outage of Roark costs the bot host while a backlog waits, and how it ends.

Waiting must cost about the same for 5 calls as for thousands: one probe a
second, no look at every waiting call. When Roark is back the whole backlog
goes, including calls another process left in the shared spool meanwhile.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter
from pipecat_roark_otel.exporter._outbox import Outbox

from .support import wait_until
from .test_delivery import end, started

UNREACHABLE = "http://127.0.0.1:9"


def fill(spool: Path, ids: list[str]) -> None:
    """Finished calls written straight to the spool, as a previous process leaves them."""
    outbox = Outbox(spool)
    for cid in ids:
        outbox.put_started(cid, started(cid))
        outbox.put_end(cid, end(cid, segments=0))


def delivery_cpu(threads: list[threading.Thread]) -> float:
    return sum(
        time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        for t in threads
        if t.ident is not None and t.is_alive()
    )


def waiting_out_the_outage(exp: RoarkSpanExporter) -> bool:
    stats = exp.stats()
    return bool(stats["breaker_open"]) and stats["in_flight"] == 0


def test_a_large_backlog_waits_out_an_outage_for_almost_no_cpu(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    ids = [f"call-{i}" for i in range(2000)]
    fill(spool, ids)
    exp = RoarkSpanExporter(api_key="rk_test_local", base_url=UNREACHABLE, spool_dir=spool)
    try:
        exp.engine.start()
        # The first sends fail until the breaker shuts the gate; then only probes go.
        wait_until(lambda: waiting_out_the_outage(exp), 60, "the gate shut, the burst over")
        threads = exp.engine.delivery._threads
        retried = exp.stats()["retried"]
        cpu, t0 = delivery_cpu(threads), time.monotonic()
        wait_until(lambda: time.monotonic() - t0 >= 5.0, 10, "5 s of waiting")
        spent = delivery_cpu(threads) - cpu
        # ~2 ms/s measured; cycling every waiting call through a session cost ~120 ms/s.
        assert spent < 0.15, f"delivery threads spent {spent * 1000:.0f} ms of CPU in 5 s"
        assert exp.stats()["retried"] > retried  # still probing
        assert len(Outbox(spool).pending_keys()) == len(ids)  # nothing lost
    finally:
        exp.shutdown()


def test_when_roark_returns_the_whole_backlog_goes_promptly(
    tmp_path: Path, roark: LocalRoark
) -> None:
    spool = tmp_path / "spool"
    ids = [f"call-{i}" for i in range(200)]
    fill(spool, ids)
    roark.faults.set_down(True)
    exp = RoarkSpanExporter(api_key=roark.api_key, base_url=roark.base_url, spool_dir=spool)
    try:
        exp.engine.start()
        wait_until(lambda: waiting_out_the_outage(exp), 60, "the gate shut, the burst over")
        fill(spool, ["written-by-another-process"])  # no notify: only a rescan finds it
        roark.faults.set_down(False)
        back = time.monotonic()
        wait_until(lambda: bool(roark.calls()), 10, "the first delivery")
        first = time.monotonic() - back
        assert first < 5.0, f"delivery resumed {first:.1f} s after Roark came back"

        def ended() -> set[str]:
            return {c["pipecatCallId"] for c in roark.calls() if c["status"] == "ended"}

        everyone = {*ids, "written-by-another-process"}
        wait_until(lambda: ended() == everyone, 60, "every call delivered")
        wait_until(lambda: not Outbox(spool).pending_keys(), 10, "the spool empty")
    finally:
        exp.shutdown()
