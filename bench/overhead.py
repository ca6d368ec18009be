"""CPU per frame: no observer, a no-op observer, the incumbent and us, side by side.

    python -m bench.overhead [--quick] [--seconds 180] [--runs 7] [--no-tracing] [--parts]

Each run is one scripted call through a real PipelineTask (5 pass-through processors,
plus the recorder for the setups that ship one); CPU is ``time.process_time`` (all
threads) from the first scripted frame until every observer queue has drained. Variants
are interleaved, one warm-up round is dropped, the median of the runs is reported.
Full default run: about 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from . import _pipeline as p

TARGET_RATIO = 1.3
# The spliced (compatibility) setup against the incumbent's, which is spliced too.
TARGET_SPLICED_SHARE = 0.5


def variants(args: argparse.Namespace) -> list[str]:
    names = list(p.VARIANTS_PLAIN)
    if not args.no_tracing:
        names += p.VARIANTS_TRACING
    if args.parts:
        names += p.VARIANTS_PARTS
    if not p.has_incumbent():
        names = [n for n in names if not n.startswith("incumbent")]
    return names


async def measure(names: list[str], shape: p.CallShape, runs: int) -> dict[str, list[p.CallResult]]:
    results: dict[str, list[p.CallResult]] = {n: [] for n in names}
    warm = p.CallShape(seconds=min(shape.seconds, 20.0))
    for name in names:
        await p.run_call(name, warm)
    for _ in range(runs):
        for name in names:
            results[name].append(await p.run_call(name, shape))
    return results


def summarize(results: dict[str, list[p.CallResult]]) -> dict[str, Any]:
    per: dict[str, dict[str, Any]] = {}
    for name, rs in results.items():
        us = [r.cpu_s / r.frames * 1e6 for r in rs]
        per[name] = {
            "frames": rs[0].frames,
            "us_per_frame": p.median(us),
            "us_per_frame_runs": us,
            "delivery_us": p.median([r.delivery_cpu_s / r.frames * 1e6 for r in rs]),
            "end_cpu_ms": p.median([r.end_cpu_s * 1e3 for r in rs]),
            "max_queue": max(r.max_queue for r in rs),
        }

    def extra(name: str, base: str) -> float | None:
        if name not in per or base not in per:
            return None
        return float(per[name]["us_per_frame"] - per[base]["us_per_frame"])

    for name, row in per.items():
        base = "tracing" if "tracing" in name else "none"
        noop = "noop+tracing" if "tracing" in name else "noop"
        row["extra_us"] = extra(name, base)
        noop_extra = extra(noop, base)
        row["ratio_to_noop_extra"] = (
            row["extra_us"] / noop_extra
            if row["extra_us"] is not None and noop_extra and noop_extra > 0
            else None
        )
    return per


def render(per: dict[str, Any]) -> str:
    rows = []
    for name, r in per.items():
        ratio = r["ratio_to_noop_extra"]
        rows.append(
            [
                name,
                r["frames"],
                r["us_per_frame"],
                r["extra_us"] if r["extra_us"] is not None else "-",
                f"{ratio:.2f}x" if ratio is not None else "-",
                r["delivery_us"] if r["delivery_us"] else "-",
                r["end_cpu_ms"],
                r["max_queue"],
            ]
        )
    headers = ["variant", "frames", "us/frame", "extra us", "x no-op extra", "delivery us"]
    headers += ["end ms", "max q"]
    return p.table(headers, rows)


def verdict(per: dict[str, Any]) -> list[str]:
    lines = []
    for name in ("ours", "ours+tracing", "ours_spliced", "incumbent", "incumbent+tracing"):
        ratio = per.get(name, {}).get("ratio_to_noop_extra")
        if ratio is None:
            continue
        line = f"{name}: {ratio:.2f}x the no-op observer's extra"
        if name in ("ours", "ours+tracing"):
            line += f" ({'meets' if ratio <= TARGET_RATIO else 'misses'} <= {TARGET_RATIO}x)"
        lines.append(line)
    for mine, theirs in (
        ("ours", "incumbent"),
        ("ours+tracing", "incumbent+tracing"),
        ("ours_spliced", "incumbent"),
    ):
        ours, inc = per.get(mine), per.get(theirs)
        if ours and inc and ours["extra_us"] is not None and inc["extra_us"]:
            share = ours["extra_us"] / inc["extra_us"]
            line = f"{mine} extra / {theirs} extra: {share:.2f}"
            if mine == "ours_spliced":
                ok = "meets" if share <= TARGET_SPLICED_SHARE else "misses"
                line += f" ({ok} <= {TARGET_SPLICED_SHARE})"
            lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(
        prog="python -m bench.overhead", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--quick", action="store_true", help="10 s calls, 1 run (a smoke run)")
    ap.add_argument("--seconds", type=float, default=180.0, help="call length (default 180)")
    ap.add_argument("--runs", type=int, default=7, help="interleaved runs after a warm-up")
    ap.add_argument("--no-tracing", action="store_true", help="skip the enable_tracing=True set")
    ap.add_argument("--parts", action="store_true", help="add recorder/observer breakdown rows")
    ap.add_argument("--variants", default=None, help="comma-separated subset, for debugging")
    ap.add_argument("--out", default="overhead", help="results file name under bench/results/")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.runs = min(args.seconds, 10.0), 1
    p.quiet_logs()
    names = args.variants.split(",") if args.variants else variants(args)
    shape = p.CallShape(seconds=args.seconds)
    t0 = time.monotonic()
    results = asyncio.run(measure(names, shape, args.runs))
    per = summarize(results)
    print(f"CPU per frame, {args.seconds:g} s call, median of {args.runs} interleaved runs")
    print(render(per))
    for line in verdict(per):
        print(line)
    return p.write_results(
        "overhead",
        args.out,
        t0,
        seconds=args.seconds,
        runs=args.runs,
        target_ratio=TARGET_RATIO,
        results=per,
    )


if __name__ == "__main__":
    main()
