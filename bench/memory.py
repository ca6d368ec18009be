"""Concurrent calls flat out: CPU and RSS per call, loop stalls, threads, HTTP clients.

    python -m bench.memory [--quick] [--calls 100] [--seconds 30] [--runs 3]

Each (variant, concurrency) runs in a fresh process: one warm-up call, then N calls at
once through N real PipelineTasks on one loop. Runs are interleaved (every variant once,
then again) and the medians reported. Extra RSS per call is (peak - warm baseline) minus
the no-op observer's, over N; extra CPU per frame is over no observer at all. Our
observer's longest synchronous step on the loop (one push handled, the call's end) is
timed around its entry points. Midway through, the child counts threads, httpx clients
and SSL contexts alive. Default (100 calls of 30 s, 4 variants, 3 runs): ~12 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

from . import _pipeline as p
from .export import minimal_receiver

TARGET_MB_PER_CALL = 1.0
TARGET_SHARE_OF_INCUMBENT = 0.5
TARGET_RATIO_TO_NOOP = 1.5
TARGET_STALL_MS = 2.0


class _Steps:
    """The longest synchronous step seen (loop thread CPU seconds) and what it handled.

    ``worst`` leaves out garbage collections that fell inside the step: a collection
    walks every object of the process (100 pipelines here), and whichever allocation
    triggers it pays; ``worst_gc`` is the longest such collection, reported apart.
    ``worst_wall`` is the longest step by the clock, any thread's collections left out
    (one holds the GIL, so the loop waits for it): what the loop stood still for, waits
    for the GIL held by other threads and the OS included.
    """

    worst = 0.0
    where = ""
    worst_with_gc = 0.0
    worst_gc = 0.0
    worst_wall = 0.0
    where_wall = ""

    @classmethod
    def note(cls, seconds: float, wall: float, gc: tuple[float, float], where: str) -> None:
        gc_seconds, gc_wall = gc
        if seconds - gc_seconds > cls.worst:
            cls.worst, cls.where = seconds - gc_seconds, where
        if wall - gc_wall > cls.worst_wall:
            cls.worst_wall, cls.where_wall = wall - gc_wall, where
        cls.worst_with_gc = max(cls.worst_with_gc, seconds)
        cls.worst_gc = max(cls.worst_gc, gc_seconds)

    @classmethod
    def reset(cls) -> None:
        cls.worst = cls.worst_with_gc = cls.worst_gc = cls.worst_wall = 0.0
        cls.where = cls.where_wall = ""


class _Gc:
    """Garbage collection so far (``gc.callbacks``): the loop thread's CPU in it, and the
    clock time of every thread's, since the loop cannot run while any thread collects."""

    spent = 0.0
    wall = 0.0
    longest_elsewhere = 0.0  # the longest collection run by a thread other than the loop's
    _cpu_started = 0.0
    _wall_started = 0.0
    _thread = threading.get_ident()

    @classmethod
    def callback(cls, phase: str, _info: dict[str, int]) -> None:
        now, mine = time.perf_counter(), threading.get_ident() == cls._thread
        if phase == "start":
            cls._wall_started = now
            if mine:
                cls._cpu_started = time.thread_time()
            return
        took = now - cls._wall_started
        cls.wall += took
        if mine:
            cls.spent += time.thread_time() - cls._cpu_started
        else:
            cls.longest_elsewhere = max(cls.longest_elsewhere, took)

    @classmethod
    def mark(cls) -> tuple[float, float]:
        return cls.spent, cls.wall

    @classmethod
    def since(cls, mark: tuple[float, float]) -> tuple[float, float]:
        return cls.spent - mark[0], cls.wall - mark[1]


class _Timed:
    """Awaits a coroutine, timing each step it runs between suspensions.

    Thread CPU time first: on a shared machine the OS may deschedule the loop mid-step,
    which is not work of ours. The clock too: a step also waits whenever it lets the GIL
    go (a C call that releases it) and another thread takes it.
    """

    def __init__(self, coro: Any, where: str) -> None:
        self._coro = coro
        self._where = where

    def __await__(self) -> Any:
        it = self._coro.__await__()
        value: Any = None
        error: BaseException | None = None
        while True:
            t, w, g = time.thread_time(), time.perf_counter(), _Gc.mark()
            try:
                out = it.throw(error) if error is not None else it.send(value)
            except StopIteration as stop:
                self._note(t, w, g)
                return stop.value
            self._note(t, w, g)
            try:
                value, error = (yield out), None
            except BaseException as e:
                value, error = None, e

    def _note(self, t: float, w: float, g: tuple[float, float]) -> None:
        cpu, wall = time.thread_time() - t, time.perf_counter() - w
        _Steps.note(cpu, wall, _Gc.since(g), self._where)


def _timed(variant: str) -> Any:
    """The observer for ``variant``, its entry points timed step by step (bench only).

    ``noop`` times a bare ``BaseObserver`` the same way: its longest step, which does no
    work at all, is the floor of this measure on the machine at the time.
    """
    from pipecat.observers.base_observer import BaseObserver

    from pipecat_roark_otel import RoarkObserver

    class Steps:
        """Times each push and process event of the observer class it is mixed into."""

        def on_push_frame(self, data: Any) -> Any:
            return _Timed(super().on_push_frame(data), type(data.frame).__name__)

        def on_process_frame(self, data: Any) -> Any:
            return _Timed(super().on_process_frame(data), type(data.frame).__name__)

    class TimedNoop(Steps, BaseObserver):
        pass

    class Timed(Steps, RoarkObserver):
        def _finish(self, reason: str, now_ns: int) -> Any:
            return _Timed(super()._finish(reason, now_ns), "call end")

    def make() -> tuple[Any, Any]:
        if variant == "noop":
            return TimedNoop(), None
        obs = Timed(agent_id="bench-agent", conversation_id=f"bench-{uuid.uuid4()}")
        return obs, (obs.audio_processor if variant == "ours_spliced" else None)

    return make


def _steal_ticks() -> int | None:
    """The machine's stolen CPU ticks so far (``/proc/stat``), where the kernel reports them.

    A virtual CPU preempted by its host keeps counting the running thread's CPU time, so a
    step's CPU time includes any steal that fell inside it.
    """
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8])
    except (OSError, IndexError, ValueError):
        return None


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
    _Steps.reset()
    gc.callbacks.append(_Gc.callback)
    base_rss = p.rss_bytes()
    base_census = _census()
    peak = [base_rss]
    handoff_peak = [0]
    stop = threading.Event()
    # Audio waiting in memory for a delivery thread to persist it (bench only: private).
    engine = p.otel().exporter.engine
    handoff = getattr(engine.delivery, "_handoff", None) if "ours" in variant else None

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], p.rss_bytes())
            if handoff is not None:
                handoff_peak[0] = max(handoff_peak[0], handoff.counts()["handoff_bytes"])

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

    # Timing the steps costs CPU itself: only the *_steps rows are timed.
    make = _timed(variant.removesuffix("_steps")) if variant.endswith("_steps") else None

    async def one() -> None:
        r = await p.run_call(variant, shape, on_ready=ready, collect=False, sinks=sinks, make=make)
        done.append(r)

    c0, w0, d0 = time.process_time(), time.perf_counter(), p.delivery_cpu()
    steal0 = _steal_ticks()
    watcher = asyncio.ensure_future(midway())
    await asyncio.gather(*(one() for _ in range(calls)))
    cpu = time.process_time() - c0 - census_cpu[0]
    delivery_cpu = p.delivery_cpu() - d0
    wall = time.perf_counter() - w0
    steal1 = _steal_ticks()
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
        "handoff_peak_mb": handoff_peak[0] / 2**20,
        "census_before": base_census,
        "census_midway": census,
        "max_observer_queue": max((r.max_queue for r in done), default=0),
        "frames": frames,
        "us_per_frame": cpu / max(1, frames) * 1e6,
        "delivery_us_per_frame": delivery_cpu / max(1, frames) * 1e6,
        "wall_s": wall,
        "worst_step_ms": _Steps.worst * 1e3 if variant.endswith("_steps") else None,
        "worst_step_at": _Steps.where,
        "worst_step_wall_ms": _Steps.worst_wall * 1e3 if variant.endswith("_steps") else None,
        "worst_step_wall_at": _Steps.where_wall,
        # Share of the machine's CPU time its host took back during the calls.
        "steal_share": (
            (steal1 - steal0) / os.sysconf("SC_CLK_TCK") / (wall * (os.cpu_count() or 1))
            if steal0 is not None and steal1 is not None
            else None
        ),
        "worst_step_with_gc_ms": _Steps.worst_with_gc * 1e3,
        "worst_gc_in_step_ms": _Steps.worst_gc * 1e3,
        "longest_gc_elsewhere_ms": _Gc.longest_elsewhere * 1e3,
    }


def _measure(names: list[str], n: int, args: argparse.Namespace, url: str) -> list[Any]:
    """Every variant ``args.runs`` times at concurrency ``n``, interleaved; median rows."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(args.runs):
        for name in names:
            runs[name].append(run_child(name, n, args.seconds, url))
    rows = []
    by = {name: _median_row(rs) for name, rs in runs.items()}
    none, noop = by.get("none"), by.get("noop")
    for r in by.values():
        r["extra_mb_per_call"] = (
            (r["delta_mb"] - noop["delta_mb"]) / n if noop is not None else None
        )
        r["extra_us"] = r["us_per_frame"] - none["us_per_frame"] if none else None
        rows.append(r)
    return rows


def _median_row(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median CPU per frame, its RSS and worst step replaced by medians."""
    row = dict(sorted(rs, key=lambda r: r["us_per_frame"])[len(rs) // 2])
    row["us_per_frame"] = p.median([r["us_per_frame"] for r in rs])
    row["us_per_frame_runs"] = [r["us_per_frame"] for r in rs]
    row["delivery_us_per_frame"] = p.median([r["delivery_us_per_frame"] for r in rs])
    row["delta_mb"] = p.median([r["delta_mb"] for r in rs])
    row["delta_mb_runs"] = [r["delta_mb"] for r in rs]
    row["handoff_peak_mb"] = p.median([r["handoff_peak_mb"] for r in rs])
    steps = [r for r in rs if r["worst_step_ms"] is not None]
    # A timed run has both figures; each comes from the run where it was longest.
    for ms, at in (
        ("worst_step_ms", "worst_step_at"),
        ("worst_step_wall_ms", "worst_step_wall_at"),
    ):
        worst = max(steps, key=lambda r: r[ms]) if steps else None
        row[ms] = worst[ms] if worst else None
        row[at] = worst[at] if worst else ""
    row["worst_step_with_gc_ms"] = max((r["worst_step_with_gc_ms"] for r in steps), default=None)
    row["worst_gc_in_step_ms"] = max((r["worst_gc_in_step_ms"] for r in steps), default=None)
    row["longest_gc_elsewhere_ms"] = max((r["longest_gc_elsewhere_ms"] for r in steps), default=0)
    return row


def verdict(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    by_calls: dict[int, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_calls.setdefault(r["calls"], {})[r["variant"]] = r
    for n, by in by_calls.items():
        ours, inc, noop = by.get("ours"), by.get("incumbent"), by.get("noop")
        steps, floor = by.get("ours_steps"), by.get("noop_steps")
        for r in (ours, inc):
            if r is not None and r["extra_mb_per_call"] is not None:
                ok = "meets" if r["extra_mb_per_call"] <= TARGET_MB_PER_CALL else "misses"
                queued = (
                    f"; audio queued for our delivery threads at its peak "
                    f"{r['handoff_peak_mb'] / n:.2f} MB/call"
                    if r["handoff_peak_mb"]
                    else ""
                )
                lines.append(
                    f"{r['variant']} x{n}: {r['extra_mb_per_call']:.2f} MB/call extra "
                    f"({ok} <= {TARGET_MB_PER_CALL}{queued})"
                )
        if ours is None or ours["extra_us"] is None:
            continue
        for other, target in ((inc, TARGET_SHARE_OF_INCUMBENT), (noop, TARGET_RATIO_TO_NOOP)):
            if other is not None and other["extra_us"]:
                ratio = ours["extra_us"] / other["extra_us"]
                ok = "meets" if ratio <= target else "misses"
                lines.append(
                    f"ours x{n}: extra CPU/frame {ratio:.2f}x {other['variant']}'s "
                    f"({ours['extra_us']:.1f} vs {other['extra_us']:.1f} us; {ok} <= {target}x)"
                )
        if noop is not None and noop["extra_us"] and ours["delivery_us_per_frame"]:
            # The no-op delivers nothing: what observing and recording cost, apart.
            observing = ours["extra_us"] - ours["delivery_us_per_frame"]
            lines.append(
                f"ours x{n}: of that, our delivery threads {ours['delivery_us_per_frame']:.1f} "
                f"us/frame; the rest {observing:.1f} us = {observing / noop['extra_us']:.2f}x "
                f"noop's extra"
            )
        if steps is not None and steps["worst_step_ms"] is not None:
            ok = "meets" if steps["worst_step_ms"] <= TARGET_STALL_MS else "misses"
            lines.append(
                f"ours x{n}: longest synchronous step of ours on the loop "
                f"{steps['worst_step_ms']:.2f} ms CPU, handling {steps['worst_step_at']} "
                f"({ok} <= {TARGET_STALL_MS:g} ms; from the ours_steps run; garbage "
                f"collections that fell in a step left out: longest "
                f"{steps['worst_gc_in_step_ms']:.2f} ms, worst step with one "
                f"{steps['worst_step_with_gc_ms']:.2f} ms)"
            )
            ok = "meets" if steps["worst_step_wall_ms"] <= TARGET_STALL_MS else "misses"
            lines.append(
                f"ours x{n}: longest step of ours by the clock {steps['worst_step_wall_ms']:.2f} "
                f"ms, handling {steps['worst_step_wall_at']} ({ok} <= {TARGET_STALL_MS:g} ms; "
                f"a step also waits for the GIL once a C call in it lets it go, and for the OS; "
                f"collections left out, any thread's: the longest another thread ran "
                f"{steps['longest_gc_elsewhere_ms']:.2f} ms)"
            )
        if floor is not None and floor["worst_step_ms"] is not None:
            lines.append(
                f"noop x{n}: longest step of a no-op observer, timed the same way "
                f"{floor['worst_step_ms']:.2f} ms CPU, handling {floor['worst_step_at']} "
                f"(the floor of this measure here; host steal during the calls: "
                f"{100 * (floor['steal_share'] or 0):.1f}% of the CPUs); by the clock "
                f"{floor['worst_step_wall_ms']:.2f} ms"
            )
    return lines


def run_child(variant: str, calls: int, seconds: float, url: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.memory", "--child", variant]
    cmd += ["--calls", str(calls), "--seconds", str(seconds), "--url", url]
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
        "--variants", default=None, help="comma-separated (default none,noop,incumbent,ours)"
    )
    ap.add_argument("--runs", type=int, default=3, help="interleaved runs; medians reported")
    ap.add_argument(
        "--dead-url",
        action="store_true",
        help="deliver nowhere (a refused connect), as before; default: bench/_receiver.py",
    )
    ap.add_argument("--url", default=p.UNREACHABLE_URL, help=argparse.SUPPRESS)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default="memory", help="results file name under bench/results/")
    args = ap.parse_args(argv)
    if args.quick:
        args.calls, args.seconds, args.runs = "5", min(args.seconds, 3.0), 1
    p.quiet_logs()
    if args.child:
        p.DELIVERY_URL = args.url
        doc = asyncio.run(_child(args.child, int(args.calls), args.seconds))
        print(json.dumps(doc))
        return doc
    default = ["none", "noop", "incumbent", "ours", "ours_steps", "noop_steps"]
    names = args.variants.split(",") if args.variants else default
    if not p.has_incumbent():
        names = [n for n in names if n != "incumbent"]
    t0 = time.monotonic()
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        url = p.UNREACHABLE_URL if args.dead_url else stack.enter_context(minimal_receiver())
        for n in [int(c) for c in args.calls.split(",")]:
            rows += _measure(names, n, args, url)
    table_rows = [
        [
            r["variant"],
            r["calls"],
            r["delta_mb"],
            r["extra_mb_per_call"] if r["extra_mb_per_call"] is not None else "-",
            r["handoff_peak_mb"],
            r["census_midway"].get("threads", "-"),
            r["census_midway"].get("httpx_clients", "-"),
            r["census_midway"].get("ssl_contexts", "-"),
            r["max_observer_queue"],
            r["us_per_frame"],
            r["extra_us"] if r["extra_us"] is not None else "-",
            r["delivery_us_per_frame"],
            r["worst_step_ms"] if r["worst_step_ms"] is not None else "-",
        ]
        for r in rows
    ]
    headers = ["variant", "calls", "RSS +MB", "extra MB/call", "audio queued MB", "threads"]
    headers += ["httpx", "ssl ctx"]
    headers += ["max obs q", "us/frame", "extra us", "delivery us", "worst step ms"]
    print(
        f"{args.seconds:g} s calls, all at once, flat out (one process per cell), "
        f"median of {args.runs} interleaved runs"
    )
    print(p.table(headers, table_rows))
    for line in verdict(rows):
        print(line)
    return p.write_results("memory", args.out, t0, rows=rows)


if __name__ == "__main__":
    main()
