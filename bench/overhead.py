"""CPU per frame: no observer, a no-op observer, the incumbent and us, side by side.

    python -m bench.overhead [--quick] [--seconds 180] [--runs 7] [--no-tracing] [--parts]
                             [--dead-url]

Each run is one scripted call through a real PipelineTask (5 pass-through processors,
plus the recorder for the setups that ship one); CPU is ``time.process_time`` (all
threads) from the first scripted frame until every observer queue has drained, and the
loop thread's share of it apart. Variants are interleaved (each round starts one variant
further on), one warm-up round is dropped, the median of the runs is reported. Both sides
deliver to ``bench/_receiver.py``; our calls are delivered between rounds, outside the
measure. Full default run: about 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
from typing import Any

from . import _pipeline as p
from .export import minimal_receiver

TARGET_RATIO = 1.3
# The spliced (compatibility) setup against the incumbent's, which is spliced too.
TARGET_SPLICED_SHARE = 0.5
BOOTSTRAP_DRAWS = 2000


def variants(args: argparse.Namespace) -> list[str]:
    names = list(p.VARIANTS_PLAIN)
    if not args.no_tracing:
        names += p.VARIANTS_TRACING
    if args.parts:
        names += p.VARIANTS_PARTS
    if not p.has_incumbent():
        names = [n for n in names if not n.startswith("incumbent")]
    return names


async def measure(
    names: list[str], shape: p.CallShape, runs: int, *, settle: bool = True
) -> dict[str, list[p.CallResult]]:
    results: dict[str, list[p.CallResult]] = {n: [] for n in names}
    warm = p.CallShape(seconds=min(shape.seconds, 20.0))
    for name in names:
        await p.run_call(name, warm)
        await _settle(name, settle)
    for r in range(runs):
        # Each round starts one variant further on: none always follows the same one.
        k = r % len(names)
        for name in names[k:] + names[:k]:
            d0 = p.delivery_cpu()
            result = await p.run_call(name, shape)
            await _settle(name, settle)
            # Our delivery threads' CPU for the whole call, wherever it fell: how much of it
            # lands inside the measure depends on when they get the GIL (0-11 µs/frame).
            result.delivery_call_cpu_s = p.delivery_cpu() - d0
            results[name].append(result)
    return results


async def _settle(name: str, settle: bool) -> None:
    """Outside the measure: our call delivered before the next variant's round starts.

    Otherwise our delivery threads work on earlier calls during other variants' rounds
    (against the dead URL they retry the whole backlog, more with every call).
    """
    if settle and name.startswith("ours"):
        exporter = p.otel().exporter
        await asyncio.to_thread(exporter.force_flush, 60_000)


def summarize(results: dict[str, list[p.CallResult]]) -> dict[str, Any]:
    per: dict[str, dict[str, Any]] = {}
    for name, rs in results.items():
        us = [r.cpu_s / r.frames * 1e6 for r in rs]
        loop = [r.loop_cpu_s / r.frames * 1e6 for r in rs]
        per[name] = {
            "frames": rs[0].frames,
            "us_per_frame": p.median(us),
            "us_per_frame_runs": us,
            "loop_us": p.median(loop),
            "loop_us_runs": loop,
            "delivery_us": p.median([r.delivery_cpu_s / r.frames * 1e6 for r in rs]),
            "delivery_call_us": p.median([r.delivery_call_cpu_s / r.frames * 1e6 for r in rs]),
            "end_cpu_ms": p.median([r.end_cpu_s * 1e3 for r in rs]),
            "max_queue": max(r.max_queue for r in rs),
        }

    def extra(name: str, base: str, key: str = "us_per_frame") -> float | None:
        if name not in per or base not in per:
            return None
        return float(per[name][key] - per[base][key])

    for name, row in per.items():
        base = "tracing" if "tracing" in name else "none"
        noop = "noop+tracing" if "tracing" in name else "noop"
        row["extra_us"] = extra(name, base)
        row["ratio_to_noop_extra"] = _ratio(row["extra_us"], extra(noop, base))
        row["loop_ratio_to_noop_extra"] = _ratio(
            extra(name, base, "loop_us"), extra(noop, base, "loop_us")
        )
        if base in per and noop in per:
            paired = list(
                zip(
                    row["us_per_frame_runs"],
                    per[base]["us_per_frame_runs"],
                    per[noop]["us_per_frame_runs"],
                    strict=True,
                )
            )
            ratios = [_ratio(mine - b, n - b) for mine, b, n in paired]
            row["ratio_runs"] = [r for r in ratios if r is not None]
            row["ratio_paired"], row["ratio_interval"] = _paired_ratio(paired)
    return per


def _paired_ratio(
    rounds: list[tuple[float, float, float]],
) -> tuple[float | None, list[float] | None]:
    """The median extra over the median no-op extra, each taken round by round, and a 90%
    interval.

    A round's variants run back to back, so taking each extra within its round leaves out
    the machine's drift, and medians leave out the rounds a neighbour disturbed; the
    interval (a bootstrap over rounds, seeded) says whether a target is met, missed, or
    inside the measure's noise.
    """

    def ratio(sample: list[tuple[float, float, float]]) -> float | None:
        return _ratio(
            p.median([mine - b for mine, b, _ in sample]), p.median([n - b for _, b, n in sample])
        )

    point = ratio(rounds)
    if point is None or len(rounds) < 5:
        return point, None
    rng = random.Random(0)
    draws = [ratio(rng.choices(rounds, k=len(rounds))) for _ in range(BOOTSTRAP_DRAWS)]
    found = [d for d in draws if d is not None]
    return point, [p.percentile(found, 5), p.percentile(found, 95)]


def _ratio(extra: float | None, noop_extra: float | None) -> float | None:
    if extra is None or noop_extra is None or noop_extra <= 0:
        return None
    return extra / noop_extra


def render(per: dict[str, Any]) -> str:
    rows = []
    for name, r in per.items():
        ratio = r["ratio_to_noop_extra"]
        loop = r["loop_ratio_to_noop_extra"]
        rows.append(
            [
                name,
                r["frames"],
                r["us_per_frame"],
                r["extra_us"] if r["extra_us"] is not None else "-",
                f"{ratio:.2f}x" if ratio is not None else "-",
                r["loop_us"],
                f"{loop:.2f}x" if loop is not None else "-",
                r["delivery_us"] if r["delivery_us"] else "-",
                r["delivery_call_us"] if r["delivery_call_us"] else "-",
                r["end_cpu_ms"],
                r["max_queue"],
            ]
        )
    headers = ["variant", "frames", "us/frame", "extra us", "x no-op extra", "loop us", "loop x"]
    headers += ["delivery us", "of the call"]
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
        paired, interval = per[name].get("ratio_paired"), per[name].get("ratio_interval")
        if paired is not None and interval is not None:
            line += f"; paired by round {paired:.2f}x, 90% interval {interval[0]:.2f}-"
            line += f"{interval[1]:.2f}x"
            if name in ("ours", "ours+tracing"):
                line += f" ({_judge(interval)})"
        rounds = per[name].get("ratio_runs") or []
        if rounds:
            line += (
                f"; per round {min(rounds):.2f}-{max(rounds):.2f}x (median {p.median(rounds):.2f}x)"
            )
        loop = per[name].get("loop_ratio_to_noop_extra")
        if loop is not None:
            line += f"; loop thread only {loop:.2f}x"
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


def _judge(interval: list[float]) -> str:
    if interval[1] <= TARGET_RATIO:
        return f"meets <= {TARGET_RATIO}x"
    if interval[0] > TARGET_RATIO:
        return f"misses <= {TARGET_RATIO}x"
    return f"{TARGET_RATIO}x is inside the interval: more rounds, or a quieter machine"


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
    ap.add_argument(
        "--dead-url",
        action="store_true",
        help="deliver nowhere (a refused connect), as before; default: bench/_receiver.py",
    )
    ap.add_argument("--out", default="overhead", help="results file name under bench/results/")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.runs = min(args.seconds, 10.0), 1
    p.quiet_logs()
    names = args.variants.split(",") if args.variants else variants(args)
    shape = p.CallShape(seconds=args.seconds)
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        if not args.dead_url:
            p.DELIVERY_URL = stack.enter_context(minimal_receiver())
        results = asyncio.run(measure(names, shape, args.runs, settle=not args.dead_url))
        stats = p.otel().exporter.stats()
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
        delivery_url="dead" if args.dead_url else "bench/_receiver.py",
        # Our calls delivered by the end (between rounds unless --dead-url), and what is left.
        delivery={k: stats[k] for k in ("calls_completed", "outbox_depth", "pending")},
        results=per,
    )


if __name__ == "__main__":
    main()
