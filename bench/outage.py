"""What waiting out an outage of Roark costs: delivery CPU per second against the backlog.

    python -m bench.outage [--quick] [--calls 100,1000,10000] [--seconds 20]

For each backlog size, a fresh process fills a spool with that many finished calls
(through the outbox, as a previous process leaves them), starts a RoarkSpanExporter on
it against an unreachable URL, waits until the send gate has shut and the first burst
is over, then reads the delivery threads' CPU clocks over ``--seconds``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import _pipeline as p

TS = "2025-01-01T00:00:00+00:00"


def _fill(spool: Path, calls: int) -> None:
    from pipecat_roark_otel.exporter._outbox import Outbox

    outbox = Outbox(spool)
    for i in range(calls):
        cid = f"backlog-{i}"
        outbox.put_started(
            cid, {"pipecatCallId": cid, "eventTimestamp": TS, "agentId": "bench-agent"}
        )
        ended = {
            "event": "call-ended",
            "pipecatCallId": cid,
            "eventTimestamp": TS,
            "callStartedAt": TS,
            "callEndedAt": TS,
            "callEndedReason": "agent-ended",
        }
        outbox.put_end(cid, {"segments": 0, "chunks": 0, "payload": ended})


def _one(calls: int, seconds: float) -> dict[str, Any]:
    """In this process: one backlog, one measure."""
    from pipecat_roark_otel.exporter import RoarkSpanExporter

    p.quiet_logs()
    with tempfile.TemporaryDirectory(prefix="roark-outage-") as tmp:
        spool = Path(tmp)
        _fill(spool, calls)
        exp = RoarkSpanExporter(api_key=p.BENCH_KEY, base_url=p.UNREACHABLE_URL, spool_dir=spool)
        exp.engine.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            stats = exp.stats()
            if stats["breaker_open"] and stats["in_flight"] == 0:
                break
            time.sleep(0.05)
        cpu, t0 = p.delivery_cpu(), time.monotonic()
        time.sleep(seconds)
        spent, wall = p.delivery_cpu() - cpu, time.monotonic() - t0
        waiting = exp.stats()["pending"]
        exp.engine.shutdown(0.5)  # nothing can go: no need for the usual 5 s
    return {"calls": calls, "cpu_ms_per_s": spent / wall * 1e3, "pending": waiting}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.outage", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="100 calls for 2 s (a smoke run)")
    ap.add_argument("--calls", default="100,1000,10000", help="backlog sizes, comma-separated")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured window (default 20)")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default="outage", help="results file name under bench/results/")
    args = ap.parse_args(argv)
    if args.one is not None:
        print(json.dumps(_one(args.one, args.seconds)))
        return {}
    if args.quick:
        args.calls, args.seconds = "100", 2.0
    t0 = time.monotonic()
    results = []
    for calls in (int(c) for c in args.calls.split(",")):
        cmd = [sys.executable, "-m", "bench.outage", "--one", str(calls)]
        out = subprocess.run(
            [*cmd, "--seconds", str(args.seconds)],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"delivery CPU with Roark unreachable, {args.seconds:g} s measured per size")
    rows = [[r["calls"], r["cpu_ms_per_s"], r["pending"]] for r in results]
    print(p.table(["calls waiting", "CPU ms/s", "pending"], rows))
    return p.write_results("outage", args.out, t0, seconds=args.seconds, results=results)


if __name__ == "__main__":
    main()
