"""Concurrent calls flat out: extra RSS per call, threads, HTTP clients, observer backlog.

    python -m bench.memory [--quick] [--calls 100] [--seconds 30]

Each (variant, concurrency) runs in a fresh process: one warm-up call, then N calls at
once through N real PipelineTasks on one loop. Extra RSS per call is (peak - warm
baseline) minus the no-op observer's, over N. Midway through, the child counts threads,
httpx clients and SSL contexts alive. Default (100 calls of 30 s, 3 variants): ~4 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import ssl
import subprocess
import sys
import threading
import time
from typing import Any

from . import _pipeline as p

TARGET_MB_PER_CALL = 1.5


def _census() -> dict[str, int]:
    import httpx

    counts = {"httpx_clients": 0, "ssl_contexts": 0}
    for obj in gc.get_objects():
        if isinstance(obj, (httpx.Client, httpx.AsyncClient)):
            counts["httpx_clients"] += 1
        elif isinstance(obj, ssl.SSLContext):
            counts["ssl_contexts"] += 1
    counts["threads"] = threading.active_count()
    return counts


async def _child(variant: str, calls: int, seconds: float) -> dict[str, Any]:
    shape = p.CallShape(seconds=seconds)
    await p.run_call(variant, p.CallShape(seconds=5.0))
    gc.collect()
    base_rss = p.rss_bytes()
    base_census = _census()
    peak = [base_rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], p.rss_bytes())

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    tasks: list[Any] = []
    census: dict[str, int] = {}
    census_cpu = [0.0]

    async def midway() -> None:
        # Counted once every call is half way through, outside the CPU figure.
        total = p.frame_count(shape) * calls
        while _in_flight() < total // 2:
            await asyncio.sleep(0.05)
        c = time.process_time()
        census.update(_census())
        census_cpu[0] = time.process_time() - c

    done: list[p.CallResult] = []
    sinks: list[p.Sink] = []

    def _in_flight() -> int:
        return sum(s.count for s in sinks)

    def ready(task: Any) -> None:
        tasks.append(task)

    async def one() -> None:
        r = await p.run_call(variant, shape, on_ready=ready, collect=False, sinks=sinks)
        done.append(r)

    c0, w0 = time.process_time(), time.perf_counter()
    watcher = asyncio.ensure_future(midway())
    await asyncio.gather(*(one() for _ in range(calls)))
    cpu = time.process_time() - c0 - census_cpu[0]
    wall = time.perf_counter() - w0
    watcher.cancel()
    stop.set()
    sampler.join()
    frames = sum(r.frames for r in done)
    return {
        "variant": variant,
        "calls": calls,
        "seconds": seconds,
        "base_rss_mb": base_rss / 2**20,
        "peak_rss_mb": peak[0] / 2**20,
        "delta_mb": (peak[0] - base_rss) / 2**20,
        "census_before": base_census,
        "census_midway": census,
        "max_observer_queue": max((r.max_queue for r in done), default=0),
        "frames": frames,
        "us_per_frame": cpu / max(1, frames) * 1e6,
        "wall_s": wall,
    }


def run_child(variant: str, calls: int, seconds: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.memory", "--child", variant]
    cmd += ["--calls", str(calls), "--seconds", str(seconds)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{variant} x{calls} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 calls of 3 s (a smoke run)")
    ap.add_argument("--calls", default="100", help="concurrency, or a list: 10,50,100,200")
    ap.add_argument("--seconds", type=float, default=30.0, help="call length (default 30)")
    ap.add_argument(
        "--variants", default=None, help="comma-separated (default noop,incumbent,ours)"
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default="memory", help="results file name under bench/results/")
    args = ap.parse_args(argv)
    if args.quick:
        args.calls, args.seconds = "5", min(args.seconds, 3.0)
    p.quiet_logs()
    if args.child:
        doc = asyncio.run(_child(args.child, int(args.calls), args.seconds))
        print(json.dumps(doc))
        return doc
    names = args.variants.split(",") if args.variants else ["noop", "incumbent", "ours"]
    if not p.has_incumbent():
        names = [n for n in names if n != "incumbent"]
    t0 = time.monotonic()
    rows: list[dict[str, Any]] = []
    for n in [int(c) for c in args.calls.split(",")]:
        by = {name: run_child(name, n, args.seconds) for name in names}
        noop = by.get("noop")
        for r in by.values():
            r["extra_mb_per_call"] = (
                (r["delta_mb"] - noop["delta_mb"]) / n if noop is not None else None
            )
            rows.append(r)
    table_rows = [
        [
            r["variant"],
            r["calls"],
            r["delta_mb"],
            r["extra_mb_per_call"] if r["extra_mb_per_call"] is not None else "-",
            r["census_midway"].get("threads", "-"),
            r["census_midway"].get("httpx_clients", "-"),
            r["census_midway"].get("ssl_contexts", "-"),
            r["max_observer_queue"],
            r["us_per_frame"],
        ]
        for r in rows
    ]
    headers = ["variant", "calls", "RSS +MB", "extra MB/call", "threads", "httpx", "ssl ctx"]
    headers += ["max obs q", "us/frame"]
    print(f"{args.seconds:g} s calls, all at once, flat out (one process per row)")
    print(p.table(headers, table_rows))
    for r in rows:
        if r["variant"] in ("ours", "incumbent") and r["extra_mb_per_call"] is not None:
            ok = "meets" if r["extra_mb_per_call"] <= TARGET_MB_PER_CALL else "misses"
            print(
                f"{r['variant']} x{r['calls']}: {r['extra_mb_per_call']:.2f} MB/call extra "
                f"({ok} <= {TARGET_MB_PER_CALL})"
            )
    elapsed = time.monotonic() - t0
    print(f"({elapsed:.0f} s)")
    doc = {"bench": "memory", "machine": p.machine(), "elapsed_s": elapsed, "rows": rows}
    path = p.results_path(args.out)
    path.write_text(json.dumps(doc, indent=2))
    print(f"wrote {path}")
    return doc


if __name__ == "__main__":
    main()
