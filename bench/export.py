"""export() latency of a finished long call, and delivery throughput from the outbox.

    python -m bench.export [--quick] [--turns 500] [--calls 30] [--deliver 1000]

The spans come from a real call: a scripted PipelineTask through our observer into an
in-memory exporter, then cloned under fresh call ids. ``export()`` returns once the
records are written to the spool (atomic rename, no fsync). Throughput is timed from
the outbox: the calls are exported first (timed apart), then delivered, until the
receiver has them all. Two receivers, each in its own process so its CPU is not ours:
``bench/_receiver.py`` (built to not be the bottleneck; the target's) and the local Roark
(``python -m pipecat_roark_otel.devserver``). Each one's own ceiling is measured in the
same run with ``bench/_flood.py``: pipelined raw-socket clients in several processes.
Default: about 1 minute.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import pickle
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipecat_roark_otel import semconv as sc

from . import _flood as flood
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


def throughput(
    base_url: str,
    spans: list[ReadableSpan],
    calls: int,
    tmp: Path,
    received: Callable[[], int] | None,
) -> Any:
    """Delivery from the outbox: ``calls`` exported first (timed apart), then delivered.

    The export goes through an exporter aimed at a dead URL, whose engine is then shut
    down at once: the calls wait in the spool as a restarted process finds them. A fresh
    exporter to ``base_url`` then delivers them; the clock stops when ``received()`` (the
    receiver's own count of distinct call-ended) has grown by ``calls``; with no
    ``received`` (the local Roark), when our engine has completed them all.
    """
    batches = [clone(spans, f"tput-{i}-{uuid.uuid4()}") for i in range(calls)]
    spool = tmp / "spool-throughput"
    parked = _exporter(p.UNREACHABLE_URL, spool)
    t0 = time.perf_counter()
    for batch in batches:
        parked.export(batch)
    export_s = time.perf_counter() - t0
    parked.engine.shutdown(0.0)
    waiting = parked.engine.outbox.pending_keys()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    exporter = _exporter(base_url, spool)
    counters = exporter.engine.delivery.counters
    count = received or (lambda: counters.count("calls_completed"))
    before = 0 if received is None else count()
    got = 0
    while got < calls and time.perf_counter() - t0 < 120:
        time.sleep(0.02)
        got = count() - before
    deliver_s = time.perf_counter() - t0
    flushed = exporter.force_flush(60_000)
    flush_s = time.perf_counter() - t0
    cpu_s = time.process_time() - cpu0
    stats = exporter.engine.stats()
    exporter.shutdown()
    return {
        "calls": calls,
        "spans_per_call": len(spans),
        "export_s": export_s,
        "export_ms_per_call": export_s / calls * 1e3,
        "waiting_in_spool": len(waiting),
        "received": got,
        "deliver_s": deliver_s,
        "flush_s": flush_s,
        "flushed": flushed,
        "delivered": stats.get("calls_completed", 0),
        "calls_per_s": got / deliver_s if deliver_s else 0.0,
        "cpu_ms_per_call": cpu_s / calls * 1e3,
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


def server_ceiling(
    base_url: str, spans: list[ReadableSpan], calls: int, processes: int, tmp: Path
) -> Any:
    """The receiver's own limit: ``processes`` raw pipelined clients (``bench/_flood.py``),
    the same two requests per call as our delivery, with the same bodies."""
    from pipecat_roark_otel.exporter._client import EVENTS_PATH

    headers = {"x-roark-api-key": p.BENCH_KEY, "authorization": f"Bearer {p.BENCH_KEY}"}
    requests = []
    for i in range(calls):
        started, ended = _bodies(spans, f"ceiling-{i}-{uuid.uuid4()}")
        requests.append(
            [flood.build(base_url, EVENTS_PATH, _json_bytes(b), headers) for b in (started, ended)]
        )
    path = tmp / f"flood-{uuid.uuid4()}.pickle"
    path.write_bytes(pickle.dumps(requests))
    cmd = [sys.executable, "-m", "bench._flood", "--url", base_url, "--file", str(path)]
    procs = [
        subprocess.Popen(
            [*cmd, "--part", str(i), "--parts", str(processes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        for i in range(processes)
    ]
    for proc in procs:
        assert proc.stdout is not None
        proc.stdout.readline()  # ready: its part is loaded
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = [json.loads(proc.communicate(timeout=120)[0]) for proc in procs]
    elapsed = max(r["end"] for r in results) - min(r["start"] for r in results)
    ok = sum(r["ok"] for r in results)
    sent = sum(r["sent"] for r in results)
    return {
        "calls": calls,
        "processes": processes,
        "elapsed_s": elapsed,
        "ok_requests": ok,
        "requests": sent,
        "requests_per_s": sent / elapsed,
        "calls_per_s": calls / elapsed,
    }


def _json_bytes(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class ReceiverStats:
    """What ``bench/_receiver.py`` counted: requests, connections, distinct started/ended
    ids, repeats. One keep-alive connection: polling must cost the measured process little."""

    def __init__(self, base_url: str) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self._conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)

    def __call__(self) -> dict[str, int]:
        self._conn.request("GET", "/stats")
        return dict(json.loads(self._conn.getresponse().read()))

    def ended(self) -> int:
        return self()["ended"]


def roark_ended(base_url: str, prefix: str) -> int:
    """Calls the local Roark lists as ended, among those whose id starts with ``prefix``."""
    with urllib.request.urlopen(f"{base_url}/api/calls", timeout=60) as r:
        calls = json.loads(r.read())["data"]
    return sum(1 for c in calls if c["pipecatCallId"].startswith(prefix) and c["callEndedAt"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.export", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 turns, 5 calls, 20 delivered")
    ap.add_argument("--turns", type=int, default=500, help="turns in the exported call")
    ap.add_argument("--calls", type=int, default=30, help="exports timed (distinct call ids)")
    ap.add_argument("--deliver", type=int, default=1000, help="calls for the throughput run")
    ap.add_argument("--deliver-turns", type=int, default=18, help="turns per delivered call")
    ap.add_argument("--processes", type=int, default=2, help="ceiling client processes")
    ap.add_argument("--out", default="export", help="results file name under bench/results/")
    args = ap.parse_args(argv)
    if args.quick:
        args.turns, args.calls, args.deliver, args.deliver_turns = 20, 5, 20, 4
    p.quiet_logs()
    t0 = time.monotonic()
    long_call = record_call(args.turns)
    short_call = record_call(args.deliver_turns)
    n_ceiling = max(args.deliver, 200)
    with tempfile.TemporaryDirectory(prefix="roark-bench-export-") as d:
        tmp = Path(d)
        (tmp / "roark-run").mkdir()
        (tmp / "bench-run").mkdir()
        with local_roark(tmp / "roark") as url:
            lat = export_latency(url, long_call, args.calls, tmp)
            roark = throughput(url, short_call, args.deliver, tmp / "roark-run", None)
            roark["roark_lists_ended"] = roark_ended(url, "tput-")
            roark_top = server_ceiling(url, short_call, n_ceiling, args.processes, tmp)
        with minimal_receiver() as url:
            stats = ReceiverStats(url)
            fast = throughput(url, short_call, args.deliver, tmp / "bench-run", stats.ended)
            fast["receiver"] = stats()
            fast_top = server_ceiling(url, short_call, n_ceiling, args.processes, tmp)
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
    print(
        f"delivery from the outbox of {args.deliver} exported {args.deliver_turns}-turn calls "
        f"(export apart: {fast['export_ms_per_call']:.2f} ms per call)"
    )
    rows = []
    for name, run, top in (
        ("bench/_receiver.py", fast, fast_top),
        ("local Roark", roark, roark_top),
    ):
        rows.append(
            [
                name,
                f"{run['received']}/{run['calls']}",
                run["deliver_s"],
                run["calls_per_s"],
                run["cpu_ms_per_call"],
                top["calls_per_s"],
                f"{top['ok_requests']}/{top['requests']}",
            ]
        )
    print(
        p.table(
            [
                "receiver",
                "delivered",
                "s",
                "calls/s",
                "our CPU ms/call",
                "receiver ceiling calls/s",
                "ceiling ok",
            ],
            rows,
        )
    )
    ok = "meets" if fast["calls_per_s"] >= TARGET_CALLS_PER_S else "misses"
    print(
        f"target >= {TARGET_CALLS_PER_S:g} calls/s to bench/_receiver.py: {ok} "
        f"({fast['calls_per_s']:.0f}); receiver saw {fast['receiver']['repeats']} repeats; "
        f"ceiling = {args.processes} pipelined raw-socket processes, same bodies"
    )
    elapsed = time.monotonic() - t0
    print(f"({elapsed:.0f} s)")
    doc = {
        "bench": "export",
        "machine": p.machine(),
        "turns": args.turns,
        "elapsed_s": elapsed,
        "latency": lat,
        "throughput": fast,
        "receiver_ceiling": fast_top,
        "throughput_local_roark": roark,
        "local_roark_ceiling": roark_top,
    }
    path = p.results_path(args.out)
    path.write_text(json.dumps(doc, indent=2, default=str))
    print(f"wrote {path}")
    return doc


if __name__ == "__main__":
    main()
