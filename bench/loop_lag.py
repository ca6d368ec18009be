"""Event-loop lag over calls paced in real time (or sped up), with and without observers.

    python -m bench.loop_lag [--quick] [--seconds 120] [--speed 10] [--runs 3] [--calls 1]

A 1 ms ticker runs beside the calls; lag is how late each tick wakes. The calls are paced
(``speed`` x real time) so the loop is not saturated and only blocking work shows; the
window includes the calls' ends (EndFrame, span export, recorder flush). With
``--calls N`` the calls share the loop as on a bot host, their starts spread over one
turn so that their turns do not line up. Interleaved runs; worst and median-of-max
reported. Default (one call at 10x): about 2 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from . import _pipeline as p

TARGET_MS = 2.0
TICK = 0.001


async def _lagged(variant: str, shape: p.CallShape, speed: float, calls: int = 1) -> list[float]:
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(TICK)
            lags.append(max(0.0, time.perf_counter() - t - TICK))

    async def call(i: int) -> None:
        # Starts spread over one turn (scaled by the speed), as calls on a host are.
        if speed > 0:
            await asyncio.sleep(i * shape.turn_every_s / speed / calls)
        await p.run_call(variant, shape, speed=speed, collect=False)

    tick = asyncio.ensure_future(ticker())
    await asyncio.gather(*(call(i) for i in range(calls)))
    stop.set()
    await tick
    return lags


async def measure(
    names: list[str], shape: p.CallShape, speed: float, runs: int, calls: int = 1
) -> Any:
    for name in names:  # warm-up: imports, first exporter, soxr
        await _lagged(name, p.CallShape(seconds=4.0), speed * 2)
    out: dict[str, list[list[float]]] = {n: [] for n in names}
    for _ in range(runs):
        for name in names:
            out[name].append(await _lagged(name, shape, speed, calls))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(
        prog="python -m bench.loop_lag", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--quick", action="store_true", help="4 s calls at 20x, 1 run (a smoke run)")
    ap.add_argument("--seconds", type=float, default=120.0, help="call length (default 120)")
    ap.add_argument("--speed", type=float, default=10.0, help="times real time (default 10)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--calls", type=int, default=1, help="concurrent calls on the loop (default 1)")
    ap.add_argument(
        "--variants", default=None, help="default none,noop,incumbent,ours,ours+tracing"
    )
    ap.add_argument("--out", default="loop_lag", help="results file name under bench/results/")
    args = ap.parse_args(argv)
    if args.calls < 1:
        ap.error("--calls must be 1 or more")
    if args.quick:
        args.seconds, args.speed, args.runs = min(args.seconds, 4.0), 20.0, 1
    p.quiet_logs()
    names = (
        args.variants.split(",")
        if args.variants
        else ["none", "noop", "incumbent", "ours", "ours+tracing"]
    )
    if not p.has_incumbent():
        names = [n for n in names if not n.startswith("incumbent")]
    t0 = time.monotonic()
    shape = p.CallShape(seconds=args.seconds)
    raw = asyncio.run(measure(names, shape, args.speed, args.runs, args.calls))
    per: dict[str, Any] = {}
    for name, runs in raw.items():
        maxes = [max(r, default=0.0) * 1e3 for r in runs]
        allv = [v * 1e3 for r in runs for v in r]
        per[name] = {
            "ticks": len(allv),
            "worst_ms": max(maxes),
            "median_max_ms": p.median(maxes),
            "p99_ms": p.percentile(allv, 99),
            "p999_ms": p.percentile(allv, 99.9),
            "over_2ms": sum(1 for v in allv if v > TARGET_MS),
        }
    rows = [
        [n, r["ticks"], r["p99_ms"], r["p999_ms"], r["median_max_ms"], r["worst_ms"], r["over_2ms"]]
        for n, r in per.items()
    ]
    print(
        f"loop lag, {args.calls} x {args.seconds:g} s call at {args.speed:g}x, "
        f"{args.runs} interleaved runs"
    )
    print(
        p.table(
            [
                "variant",
                "ticks",
                "p99 ms",
                "p99.9 ms",
                "median max",
                "worst ms",
                f"> {TARGET_MS:g} ms",
            ],
            rows,
        )
    )
    settings = dict(seconds=args.seconds, speed=args.speed, runs=args.runs, calls=args.calls)
    return p.write_results("loop_lag", args.out, t0, **settings, results=per)


if __name__ == "__main__":
    main()
