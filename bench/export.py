"""export() latency of a finished long call, and delivery throughput to a local Roark.

    python -m bench.export [--quick] [--turns 500] [--calls 30] [--deliver 1000]

The spans come from a real call: a scripted PipelineTask through our observer into an
in-memory exporter, then cloned under fresh call ids. The local Roark runs in its own
process (``python -m pipecat_roark_otel.devserver``), so its CPU is not ours.
``export()`` returns once the records are written to the spool (atomic rename, no fsync).
Default: about 1 minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipecat_roark_otel import semconv as sc

from . import _pipeline as p

TARGET_CALLS_PER_S = 500.0


def record_call(turns: int) -> list[ReadableSpan]:
    """Our spans for a finished call of ``turns`` turns (no audio)."""
    from pipecat_roark_otel import RoarkObserver

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))

    def make() -> tuple[Any, Any]:
        # Spans only, no Roark exporter: a key of its own so the observer needs none.
        obs = RoarkObserver(
            agent_id="bench-agent",
            conversation_id="template",
            tracer_provider=provider,
            api_key=p.BENCH_KEY,
            base_url=p.UNREACHABLE_URL,
        )
        return obs, None

    shape = p.CallShape(seconds=turns * 10.0, audio=False)
    asyncio.run(p.run_call("custom", shape, make=make))
    return [s for s in memory.get_finished_spans() if s.name.startswith("roark.")]


def clone(spans: Sequence[ReadableSpan], call_id: str) -> list[ReadableSpan]:
    ids = {sc.CONVERSATION_ID: call_id, sc.GEN_AI_CONVERSATION_ID: call_id}
    return [
        ReadableSpan(
            name=s.name,
            context=s.context,
            parent=s.parent,
            resource=s.resource,
            attributes={**(s.attributes or {}), **ids},
            events=s.events,
            links=s.links,
            kind=s.kind,
            status=s.status,
            start_time=s.start_time,
            end_time=s.end_time,
            instrumentation_scope=s.instrumentation_scope,
        )
        for s in spans
    ]


@contextmanager
def local_roark(data_dir: Path) -> Iterator[str]:
    cmd = [sys.executable, "-m", "pipecat_roark_otel.devserver", "--port", "0"]
    cmd += ["--data-dir", str(data_dir), "--api-key", p.BENCH_KEY]
    with _server(cmd) as url:
        yield url


@contextmanager
def minimal_receiver() -> Iterator[str]:
    """``bench/_receiver.py``: accepts everything at once, so delivery is what is measured."""
    with _server([sys.executable, "-m", "bench._receiver", "--port", "0"]) as url:
        yield url


@contextmanager
def _server(cmd: list[str]) -> Iterator[str]:
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=root
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"(http://\S+)", line)
        if m is None:
            raise RuntimeError(f"{cmd[2]} did not start: {line!r}")
        yield m.group(1)
    finally:
        proc.terminate()
        proc.wait(10)


def _exporter(base_url: str, spool: Path) -> Any:
    from pipecat_roark_otel.exporter import RoarkSpanExporter

    return RoarkSpanExporter(api_key=p.BENCH_KEY, base_url=base_url, spool_dir=spool)


def export_latency(base_url: str, spans: list[ReadableSpan], calls: int, tmp: Path) -> Any:
    exporter = _exporter(base_url, tmp / "spool-latency")
    final = [s for s in spans if s.name == sc.SPAN_CALL]
    segments = [s for s in spans if s.name == sc.SPAN_CALL_SEGMENT]
    whole_ms, last_ms = [], []
    for i in range(calls + 2):
        a = clone(spans, f"whole-{i}-{uuid.uuid4()}")
        b = clone(segments[-1:] + final, f"last-{i}-{uuid.uuid4()}")
        t = time.perf_counter()
        exporter.export(a)
        t1 = time.perf_counter()
        exporter.export(b)
        t2 = time.perf_counter()
        if i >= 2:  # the first two warm the spool and the translators
            whole_ms.append((t1 - t) * 1e3)
            last_ms.append((t2 - t1) * 1e3)
    exporter.force_flush(30_000)
    exporter.shutdown()
    return {
        "spans_per_call": len(spans),
        "segments_per_call": len(segments),
        "whole_call": {"median_ms": p.median(whole_ms), "p99_ms": p.percentile(whole_ms, 99)},
        "last_batch": {"median_ms": p.median(last_ms), "p99_ms": p.percentile(last_ms, 99)},
    }


def throughput(base_url: str, spans: list[ReadableSpan], calls: int, tmp: Path) -> Any:
    batches = [clone(spans, f"tput-{i}-{uuid.uuid4()}") for i in range(calls)]
    exporter = _exporter(base_url, tmp / "spool-throughput")
    before = exporter.engine.stats().get("calls_completed", 0)
    t0 = time.perf_counter()
    for batch in batches:
        exporter.export(batch)
    t_export = time.perf_counter() - t0
    flushed = exporter.force_flush(120_000)
    elapsed = time.perf_counter() - t0
    stats = exporter.engine.stats()
    exporter.shutdown()
    delivered = stats.get("calls_completed", 0) - before
    return {
        "calls": calls,
        "spans_per_call": len(spans),
        "export_s": t_export,
        "elapsed_s": elapsed,
        "flushed": flushed,
        "delivered": delivered,
        "calls_per_s": delivered / elapsed if elapsed else 0.0,
        "stats": stats,
    }


def _bodies(spans: list[ReadableSpan], call_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    from pipecat_roark_otel.exporter._assemble import assemble_call_ended
    from pipecat_roark_otel.exporter._translate import translate

    items = [i for s in clone(spans, call_id) if (i := translate(s)) is not None]
    started = next(i.body for i in items if i.kind == "started")
    end = next(i.body for i in items if i.kind == "end")
    ended, _ = assemble_call_ended(end, [i.body for i in items if i.kind == "segment"])
    return started, ended


def server_ceiling(base_url: str, spans: list[ReadableSpan], calls: int, workers: int) -> Any:
    """The local Roark's own limit: a bare httpx client, ``workers`` connections, same bodies."""
    import threading

    import httpx

    headers = {"x-roark-api-key": p.BENCH_KEY, "authorization": f"Bearer {p.BENCH_KEY}"}
    url = f"{base_url}/v1/integrations/pipecat"
    bodies = [_bodies(spans, f"ceiling-{i}-{uuid.uuid4()}") for i in range(calls)]
    statuses: list[int] = []

    def work(part: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        with httpx.Client(headers=headers) as client:
            for started, ended in part:
                statuses.append(client.post(url, json=started).status_code)
                statuses.append(client.post(url, json=ended).status_code)

    threads = [threading.Thread(target=work, args=(bodies[i::workers],)) for i in range(workers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    ok = sum(1 for s in statuses if s < 300)
    return {
        "calls": calls,
        "workers": workers,
        "elapsed_s": elapsed,
        "ok_requests": ok,
        "requests": len(statuses),
        "calls_per_s": calls / elapsed,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.export", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 turns, 5 calls, 20 delivered")
    ap.add_argument("--turns", type=int, default=500, help="turns in the exported call")
    ap.add_argument("--calls", type=int, default=30, help="exports timed (distinct call ids)")
    ap.add_argument("--deliver", type=int, default=1000, help="calls for the throughput run")
    ap.add_argument("--deliver-turns", type=int, default=18, help="turns per delivered call")
    ap.add_argument("--out", default="export", help="results file name under bench/results/")
    args = ap.parse_args(argv)
    if args.quick:
        args.turns, args.calls, args.deliver, args.deliver_turns = 20, 5, 20, 4
    p.quiet_logs()
    t0 = time.monotonic()
    long_call = record_call(args.turns)
    short_call = record_call(args.deliver_turns)
    with tempfile.TemporaryDirectory(prefix="roark-bench-export-") as d:
        tmp = Path(d)
        with local_roark(tmp / "roark") as url:
            lat = export_latency(url, long_call, args.calls, tmp)
            tput = throughput(url, short_call, args.deliver, tmp)
            ceiling = server_ceiling(url, short_call, min(args.deliver, 400), 4)
        (tmp / "fast").mkdir()
        with minimal_receiver() as url:
            fast = throughput(url, short_call, args.deliver, tmp / "fast")
            fast_ceiling = server_ceiling(url, short_call, min(args.deliver, 400), 4)
    print(
        f"export() of a finished {args.turns}-turn call ({lat['spans_per_call']} spans), "
        f"{args.calls} calls"
    )
    print(
        p.table(
            ["batch", "median ms", "p99 ms"],
            [
                [
                    "whole call in one export()",
                    lat["whole_call"]["median_ms"],
                    lat["whole_call"]["p99_ms"],
                ],
                [
                    "last segment + call span",
                    lat["last_batch"]["median_ms"],
                    lat["last_batch"]["p99_ms"],
                ],
            ],
        )
    )
    for name, run, top in (
        ("local Roark", tput, ceiling),
        ("minimal receiver (bench/_receiver.py)", fast, fast_ceiling),
    ):
        line = (
            f"delivery to the {name}: {run['delivered']}/{run['calls']} calls of "
            f"{args.deliver_turns} turns in {run['elapsed_s']:.2f} s (export "
            f"{run['export_s']:.2f} s): {run['calls_per_s']:.0f} calls/s"
        )
        if run is fast:
            ok = "meets" if run["calls_per_s"] >= TARGET_CALLS_PER_S else "misses"
            line += f" ({ok} >= {TARGET_CALLS_PER_S:g})"
        print(line)
        print(
            f"  its own ceiling (bare httpx, 4 connections, same bodies): "
            f"{top['calls_per_s']:.0f} calls/s ({top['ok_requests']}/{top['requests']} ok)"
        )
    elapsed = time.monotonic() - t0
    print(f"({elapsed:.0f} s)")
    doc = {
        "server_ceiling": ceiling,
        "bench": "export",
        "machine": p.machine(),
        "turns": args.turns,
        "elapsed_s": elapsed,
        "latency": lat,
        "throughput": tput,
        "throughput_minimal_receiver": fast,
        "minimal_receiver_ceiling": fast_ceiling,
    }
    path = p.results_path(args.out)
    path.write_text(json.dumps(doc, indent=2, default=str))
    print(f"wrote {path}")
    return doc


if __name__ == "__main__":
    main()
