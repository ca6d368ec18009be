"""Fault matrix: simulated calls through real PipelineTasks against a local Roark with faults.

For each fault, N calls are run and the receiver's view is measured: calls
received complete (whole transcript and tool records, byte-exact WAV), audio
bytes lost, and duplicates the receiver saw (an event or chunk accepted twice).

    .venv/bin/python scripts/reliability.py            # print the table
    .venv/bin/python scripts/reliability.py --write    # and update docs/RELIABILITY.md
    .venv/bin/python scripts/reliability.py -n 10 --only 5xx,reset
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "RELIABILITY.md"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"
KEY = "rk_test_reliability"
DEADLETTERS = [sys.executable, "-m", "pipecat_roark_otel.exporter.deadletters"]
OPTIONS: dict[str, float] = {
    "backoff_base": 0.02,
    "backoff_cap": 0.2,
    "auth_backoff_base": 0.3,
    "auth_backoff_cap": 0.6,
    "rescan_interval": 0.1,
    "probe_interval": 0.1,
    "request_timeout": 2.0,
}
EXPECTED_TURNS = [
    ("assistant", "Hello! Thanks for calling Copperline Care. How can I help?"),
    ("user", "I'd like to check on my order"),
    ("assistant", "Sure, let me look that up for you."),
    ("user", "Is it arriving today"),
    ("assistant", "Your order shipped yesterday and will"),
    ("user", "Great thanks"),
    ("assistant", "You're welcome. Goodbye!"),
]


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout}s")
        time.sleep(0.02)


# -- one process's calls (also run in child processes) ------------------------------------------


class Calls:
    """An engine with fast backoffs, its exporter, and a private provider, for one spool."""

    def __init__(self, key: str, base_url: str, spool: Path, **options: float) -> None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        from pipecat_roark_otel.config import RoarkSettings
        from pipecat_roark_otel.exporter import RoarkSpanExporter
        from pipecat_roark_otel.exporter._delivery import DeliveryOptions
        from pipecat_roark_otel.exporter._engine import engine_for

        settings = RoarkSettings(api_key=key, base_url=base_url, spool_dir=spool)
        self.engine = engine_for(settings, options=DeliveryOptions(**{**OPTIONS, **options}))
        self.exporter = RoarkSpanExporter(api_key=key, base_url=base_url, spool_dir=spool)
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.recorded: dict[str, bytes] = {}

    def observer(self, call_id: str) -> Any:
        from pipecat_roark_otel import RoarkObserver

        observer = RoarkObserver(
            agent_id="reliability-bot", conversation_id=call_id, tracer_provider=self.provider
        )
        chunks: list[bytes] = []
        self.recorded[call_id] = b""

        def keep(audio: bytes, _sr: int, _ch: int) -> None:
            chunks.append(audio)
            self.recorded[call_id] = b"".join(chunks)

        observer.recording.add_listener(keep)
        return observer

    async def one(self, call_id: str) -> None:
        from pipecat_roark_otel.simulation import DEFAULT_SCRIPT, run_simulated_call

        script = dataclasses.replace(DEFAULT_SCRIPT, speed=8.0)
        await run_simulated_call(self.observer(call_id), script=script, enable_tracing=False)

    async def run(self, ids: list[str]) -> None:
        await asyncio.gather(*(self.one(cid) for cid in ids))

    def flush(self, timeout: float = 60.0) -> bool:
        return self.exporter.force_flush(int(timeout * 1000))

    def close(self) -> None:
        self.exporter.shutdown()


def child(argv: list[str]) -> int:
    """``--child key base_url spool out_dir mode ids...``: mode "hang" or "flush"."""
    key, base_url, spool, out, mode, *ids = argv
    calls = Calls(key, base_url, Path(spool))
    asyncio.run(calls.run(ids))
    for cid, pcm in calls.recorded.items():
        Path(out, f"{cid}.pcm").write_bytes(pcm)
    print("CALLS DONE", flush=True)
    if mode == "hang":
        while True:
            time.sleep(1)
    ok = calls.flush(60)
    calls.close()
    return 0 if ok else 3


# -- measuring ------------------------------------------------------------------------------------


@dataclass
class Row:
    fault: str
    injected: str
    sent: int = 0
    complete: int = 0
    bytes_lost: int = 0
    duplicates: int = 0
    faulted: int = 0
    retries: int | None = None  # the sender's view; None when only child processes sent
    seconds: float = 0.0
    note: str = ""


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def measure(roark: Any, row: Row, recorded: dict[str, bytes]) -> None:
    """Fill in what the receiver has for each call."""
    for cid, pcm in recorded.items():
        row.sent += 1
        reqs = roark.requests(cid)
        row.faulted += sum(1 for r in reqs if r["fault"] is not None)
        seen: Counter[str] = Counter()
        for r in reqs:
            if r["status"] == 200 and r["endpoint"] != "presign":
                seen[r["event"] if r["endpoint"] == "webhook" else f"chunk {r['chunkIndex']}"] += 1
        row.duplicates += sum(n - 1 for n in seen.values())
        call = roark.call(cid)
        wav = roark.wav_bytes(cid)
        got = wav[44:] if wav is not None else b""
        # A byte-exact prefix counts as kept; whatever differs or is missing after it, as lost.
        same = len(pcm) if got == pcm else _common_prefix(got, pcm)
        row.bytes_lost += len(pcm) - same
        ended = (call or {}).get("ended") or {}
        turns = [(t["role"], t["content"]) for t in ended.get("transcript", [])]
        tools = [t["toolCallId"] for t in ended.get("toolCalls", [])]
        if turns == EXPECTED_TURNS and tools == ["call_1", "call_1"] and pcm and got == pcm:
            row.complete += 1


# -- scenarios -----------------------------------------------------------------------------------


@dataclass
class Ctx:
    roark: Any
    tmp: Path
    n: int
    name: str
    made: list[Calls] = dataclasses.field(default_factory=list)

    def ids(self, prefix: str | None = None) -> list[str]:
        return [f"{prefix or self.name}-{i}" for i in range(self.n)]

    def calls(self, **options: float) -> Calls:
        calls = Calls(KEY, self.roark.base_url, self.tmp / self.name / "spool", **options)
        self.made.append(calls)
        return calls


Scenario = Callable[[Ctx, Row], Awaitable[dict[str, bytes]]]


async def _plain(
    ctx: Ctx, calls: Calls, after: Callable[[], None] | None = None
) -> dict[str, bytes]:
    try:
        await calls.run(ctx.ids())
        if after is not None:
            after()
        calls.flush()
    finally:
        calls.close()
    return calls.recorded


async def baseline(ctx: Ctx, row: Row) -> dict[str, bytes]:
    return await _plain(ctx, ctx.calls())


async def down(ctx: Ctx, row: Row) -> dict[str, bytes]:
    ctx.roark.faults.set_down(True)
    calls = ctx.calls()
    await calls.run(ctx.ids())
    calls.flush(0.5)
    row.note = f"{sum(1 for c in ctx.ids() if ctx.roark.call(c))} calls arrived while down"
    ctx.roark.faults.set_down(False)
    try:
        calls.flush()
    finally:
        calls.close()
    return calls.recorded


async def five_xx(ctx: Ctx, row: Row) -> dict[str, bytes]:
    for i, status in enumerate((500, 502, 503)):
        ctx.roark.faults.fail_fraction(0.1, status, seed=100 + i)
    return await _plain(ctx, ctx.calls())


async def too_many(ctx: Ctx, row: Row) -> dict[str, bytes]:
    ctx.roark.faults.fail_fraction(0.3, 429, retry_after=0.25, seed=7)
    return await _plain(ctx, ctx.calls())


async def slow(ctx: Ctx, row: Row) -> dict[str, bytes]:
    ctx.roark.faults.set_latency(0.6)
    calls = ctx.calls(request_timeout=0.3)
    row.note = "duplicates: the server handled requests the client had given up on"
    return await _plain(ctx, calls, after=lambda: ctx.roark.faults.set_latency(0))


async def reset(ctx: Ctx, row: Row) -> dict[str, bytes]:
    ctx.roark.faults.drop_fraction(0.3, seed=3)
    return await _plain(ctx, ctx.calls())


async def mixed(ctx: Ctx, row: Row) -> dict[str, bytes]:
    f = ctx.roark.faults
    f.fail_fraction(0.1, 503, seed=11)
    f.fail_fraction(0.1, 429, retry_after=0.1, seed=12)
    f.drop_fraction(0.1, seed=13)
    f.fail_fraction(0.2, 403, endpoint="upload", seed=14)
    return await _plain(ctx, ctx.calls())


async def auth(ctx: Ctx, row: Row) -> dict[str, bytes]:
    ctx.roark.set_api_keys(["rk_test_someone_else"])
    calls = ctx.calls()
    await calls.run(ctx.ids())
    calls.flush(1.5)
    refused = sum(1 for r in ctx.roark.requests() if r["status"] == 401)
    row.note = f"{refused} refused requests while paused (no storm)"
    ctx.roark.set_api_keys([KEY])
    try:
        calls.flush()
    finally:
        calls.close()
    return calls.recorded


async def forbidden(ctx: Ctx, row: Row) -> dict[str, bytes]:
    ctx.roark.faults.fail_fraction(1.0, 403, endpoint="webhook")
    calls = ctx.calls()
    await calls.run(ctx.ids())
    calls.flush(1.0)
    ctx.roark.faults.clear()
    try:
        calls.flush()
    finally:
        calls.close()
    return calls.recorded


async def dead_letter(ctx: Ctx, row: Row) -> dict[str, bytes]:
    """422 on every call-ended once: dead letters, then the CLI resends them."""
    calls = ctx.calls()
    ids = ctx.ids()
    running = asyncio.ensure_future(calls.run(ids))
    await asyncio.to_thread(
        wait_until,
        lambda: all((ctx.roark.call(c) or {}).get("status") == "started" for c in ids),
        60,
        "calls started",
    )
    ctx.roark.faults.fail_next(len(ids), 422, endpoint="webhook")
    await running
    try:
        calls.flush()
        row.note = f"{_resend_dead_letters(calls)} dead-lettered, resent with the CLI"
        calls.engine.start()
        calls.flush()
    finally:
        calls.close()
    return calls.recorded


def _resend_dead_letters(calls: Calls) -> int:
    """Resend every dead letter with the CLI, as an operator would; how many there were."""
    dead = calls.engine.outbox.dead_keys()
    spool = str(calls.engine.outbox.root)
    for key in dead:
        subprocess.run(
            [*DEADLETTERS, "--spool-dir", spool, "resend", key], check=True, capture_output=True
        )
    return len(dead)


async def dead_chunk(ctx: Ctx, row: Row) -> dict[str, bytes]:
    """422 on one presign per call: the chunk is dead-lettered, resent late with the CLI."""
    ctx.roark.faults.fail_next(ctx.n, 422, endpoint="presign")
    calls = ctx.calls()
    try:
        await calls.run(ctx.ids())
        calls.flush()
        gaps = sum(bool((ctx.roark.call(c) or {}).get("missing_chunks")) for c in ctx.ids())
        resent = _resend_dead_letters(calls)
        row.note = f"{gaps} recordings had a gap until the CLI resent {resent} dead chunk(s)"
        calls.engine.start()
        calls.flush()
    finally:
        calls.close()
    return calls.recorded


async def cancelled(ctx: Ctx, row: Row) -> dict[str, bytes]:
    """The host cancels each PipelineTask while its call-ended is underway."""
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.runner import PipelineRunner
    from pipecat.pipeline.task import PipelineParams, PipelineTask

    from pipecat_roark_otel.simulation import DEFAULT_SCRIPT, SimulatedCall

    ctx.roark.faults.set_latency(0.2)
    calls = ctx.calls()

    async def one(cid: str) -> None:
        observer = calls.observer(cid)
        sim = SimulatedCall(dataclasses.replace(DEFAULT_SCRIPT, speed=8.0))
        ending = asyncio.Event()

        async def slow_tail(_p: object, _a: bytes, _sr: int, _ch: int) -> None:
            if sim.stt.done.is_set():
                ending.set()
                await asyncio.sleep(0.5)

        observer.audio_processor.add_event_handler("on_audio_data", slow_tail)
        task = PipelineTask(
            Pipeline(sim.processors(observer.audio_processor)),
            params=PipelineParams(audio_out_sample_rate=24_000),
            observers=[observer],
            enable_tracing=False,
        )
        runner = asyncio.ensure_future(PipelineRunner(handle_sigint=False).run(task))
        await asyncio.wait_for(ending.wait(), 60)
        await task.cancel()
        await runner
        await observer.aflush()

    try:
        await asyncio.gather(*(one(cid) for cid in ctx.ids()))
        ctx.roark.faults.set_latency(0)
        calls.flush()
    finally:
        calls.close()
    return calls.recorded


def _spawn(ctx: Ctx, spool: Path, mode: str, ids: list[str], key: str = KEY) -> Any:
    out = ctx.tmp / ctx.name / "recorded"
    out.mkdir(parents=True, exist_ok=True)
    log = open(ctx.tmp / ctx.name / f"child-{ids[0]}.log", "wb")  # noqa: SIM115
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", key, ctx.roark.base_url]
    proc = subprocess.Popen(
        [*cmd, str(spool), str(out), mode, *ids], stdout=log, stderr=subprocess.STDOUT
    )
    proc.log = log
    return proc


def _recorded(ctx: Ctx, ids: list[str]) -> dict[str, bytes]:
    out = ctx.tmp / ctx.name / "recorded"
    return {cid: (out / f"{cid}.pcm").read_bytes() for cid in ids}


def _killed_then_restarted(ctx: Ctx, key: str) -> dict[str, bytes]:
    from pipecat_roark_otel.exporter._outbox import call_key

    spool = ctx.tmp / ctx.name / "spool"
    ids = ctx.ids()
    proc = _spawn(ctx, spool, "hang", ids, key=key)
    out = ctx.tmp / ctx.name / "recorded"

    def on_disk() -> bool:
        return all(
            (spool / "v1" / "calls" / call_key(c) / "end.json").exists()
            and (out / f"{c}.pcm").exists()
            for c in ids
        )

    wait_until(on_disk, 120, "calls on disk")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.log.close()
    return _recorded(ctx, ids)


def _deliver_as_a_new_process(ctx: Ctx) -> None:
    """A fresh engine on the killed sender's spool delivers what it left."""
    calls = ctx.calls()
    calls.engine.start()
    try:
        calls.flush()
    finally:
        calls.close()


async def sigkill(ctx: Ctx, row: Row) -> dict[str, bytes]:
    ctx.roark.faults.set_down(True)
    recorded = await asyncio.to_thread(_killed_then_restarted, ctx, KEY)
    ctx.roark.faults.set_down(False)
    _deliver_as_a_new_process(ctx)
    return recorded


async def auth_restart(ctx: Ctx, row: Row) -> dict[str, bytes]:
    ctx.roark.set_api_keys(["rk_test_someone_else"])
    recorded = await asyncio.to_thread(_killed_then_restarted, ctx, KEY)
    ctx.roark.set_api_keys([KEY])
    _deliver_as_a_new_process(ctx)
    return recorded


async def shared_spool(ctx: Ctx, row: Row) -> dict[str, bytes]:
    ctx.roark.faults.fail_fraction(0.2, 503, seed=5)
    ctx.roark.faults.drop_fraction(0.1, seed=6)
    spool = ctx.tmp / ctx.name / "spool"
    ids = ctx.ids()
    groups = [ids[i::3] for i in range(3) if ids[i::3]]

    def run() -> None:
        procs = [_spawn(ctx, spool, "flush", g) for g in groups]
        for p in procs:
            p.wait(180)
            p.log.close()

    await asyncio.to_thread(run)
    row.note = f"{len(groups)} processes, one spool"
    return _recorded(ctx, ids)


SCENARIOS: list[tuple[str, str, str, Scenario]] = [
    ("baseline", "no fault", "none", baseline),
    ("down", "Roark unreachable for the whole call, then back", "every request dropped", down),
    ("5xx", "intermittent 500/502/503", "~27 % of requests (seeded)", five_xx),
    ("429", "429 Too Many Requests", "30 % of requests, Retry-After 0.25 s", too_many),
    ("slow", "responses slower than the client timeout", "0.6 s latency, 0.3 s timeout", slow),
    ("reset", "connections reset mid-request", "30 % closed without a reply", reset),
    ("mixed", "all of the above together", "10 % 503, 10 % 429, 10 % reset, 20 % 403 PUT", mixed),
    ("401", "key rejected, then accepted (same process)", "401 on every request", auth),
    ("403", "403 on the webhook, then cleared", "403 on every webhook", forbidden),
    ("4xx", "other 4xx: dead letter, CLI resend", "422 on call-ended", dead_letter),
    ("4xx chunk", "4xx on a chunk: dead letter, CLI resend", "422 on one presign", dead_chunk),
    ("cancel", "task cancelled while call-ended is sent", "0.2 s latency, cancel", cancelled),
    ("sigkill", "SIGKILL after call-ended is on disk", "down, kill -9, new process", sigkill),
    (
        "401+kill",
        "key rejected, SIGKILL, restart",
        "401, kill -9, key back, new process",
        auth_restart,
    ),
    ("shared", "3 processes share one spool", "20 % 503 + 10 % reset", shared_spool),
]


async def run_one(roark: Any, tmp: Path, n: int, spec: tuple[str, str, str, Scenario]) -> Row:
    name, fault, injected, scenario = spec
    row = Row(fault=fault, injected=injected)
    roark.faults.clear()
    roark.set_api_keys([KEY])
    t0 = time.monotonic()
    ctx = Ctx(roark, tmp, n, name)
    try:
        recorded = await scenario(ctx, row)
    except Exception as exc:  # a broken scenario is a finding, not a crash of the report
        row.note = f"scenario failed: {type(exc).__name__}: {exc}"
        recorded = {cid: b"?" for cid in Ctx(roark, tmp, n, name).ids()}
    roark.faults.clear()
    row.seconds = time.monotonic() - t0
    if ctx.made and name not in ("sigkill", "401+kill"):  # there the sender was killed
        row.retries = sum(c.engine.stats()["retried"] for c in ctx.made)
    measure(roark, row, recorded)
    return row


def table(rows: list[Row], n: int) -> str:
    head = (
        "| fault | injected | calls sent | received complete | bytes lost | duplicates seen "
        "| requests faulted | sender retries | time |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    body = "".join(
        f"| {r.fault} | {r.injected} | {r.sent} | {r.complete} | {r.bytes_lost} "
        f"| {r.duplicates} | {r.faulted} | {'n/a' if r.retries is None else r.retries} "
        f"| {r.seconds:.1f} s |\n"
        for r in rows
    )
    notes = "".join(f"- {r.fault}: {r.note}\n" for r in rows if r.note)
    return head + body + ("\nNotes:\n\n" + notes if notes else "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=5, help="calls per fault (default 5)")
    p.add_argument("--only", help="comma-separated scenario names")
    p.add_argument("--write", action="store_true", help=f"update {DOC.relative_to(ROOT)}")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    show = warnings.showwarning

    def quiet(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if not issubclass(category, DeprecationWarning):  # Pipecat's renames, forced "always"
            show(message, category, *args, **kwargs)

    warnings.showwarning = quiet
    from loguru import logger as loguru_logger

    loguru_logger.remove()  # Pipecat's per-frame chatter
    from pipecat_roark_otel.devserver import LocalRoark

    only = set(args.only.split(",")) if args.only else None
    specs = [s for s in SCENARIOS if only is None or s[0] in only]
    rows: list[Row] = []
    t0 = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="roark-reliability-") as tmp,
        LocalRoark(data_dir=Path(tmp) / "roark", api_key=KEY) as roark,
    ):
        for spec in specs:
            row = asyncio.run(run_one(roark, Path(tmp), args.n, spec))
            rows.append(row)
            print(
                f"{spec[0]:>9}: {row.complete}/{row.sent} complete, {row.bytes_lost} bytes "
                f"lost, {row.duplicates} duplicates, {row.faulted} faulted "
                f"({row.seconds:.1f}s)",
                file=sys.stderr,
                flush=True,
            )
    total = time.monotonic() - t0
    text = table(rows, args.n)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    if args.write:
        stamp = (
            f"_{args.n} calls per fault, {total:.0f} s in all; "
            f"generated by `.venv/bin/python scripts/reliability.py --write`._\n\n"
        )
        doc = DOC.read_text()
        i, j = doc.index(START) + len(START), doc.index(END)
        DOC.write_text(doc[:i] + "\n" + stamp + text + doc[j:])
    bad = [r for r in rows if r.complete != r.sent or r.bytes_lost]
    return 1 if bad else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
