"""Delivery under fault: real simulated calls, real PipelineTasks, real HTTP to the local Roark.

Every test ends with the same proof: the whole transcript and both tool records
arrived, the WAV is byte-exact against what the recorder produced, and the
receiver saw each event and each chunk exactly once (a retried request whose
first try never reached it is not a duplicate).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from pipecat_roark_otel import RoarkObserver
from pipecat_roark_otel.config import RoarkSettings
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter, deadletters
from pipecat_roark_otel.exporter._dead import DeadLetters
from pipecat_roark_otel.exporter._engine import Engine, engine_for
from pipecat_roark_otel.exporter._outbox import call_key
from pipecat_roark_otel.simulation import DEFAULT_SCRIPT, Script, run_simulated_call

from .conftest import Otel
from .support import EXPECTED_TURNS, FAST, wait_until
from .support.capture import run

pytestmark = pytest.mark.e2e

KEY = "rk_test_faults"
SCRIPT = dataclasses.replace(DEFAULT_SCRIPT, speed=8.0)


@dataclass
class Rig:
    """A local Roark, an engine with fast backoffs and the exporter that shares it."""

    roark: LocalRoark
    engine: Engine
    exporter: RoarkSpanExporter
    spool: Path
    recorded: dict[str, list[bytes]] = field(default_factory=dict)

    def observer(self, call_id: str, *, spliced: bool = False, **kwargs: Any) -> RoarkObserver:
        """An observer whose recording is kept; ``spliced``: by ``audio_processor``."""
        observer = RoarkObserver(agent_id="fault-bot", conversation_id=call_id, **kwargs)
        chunks = self.recorded.setdefault(call_id, [])

        async def keep(_p: object, audio: bytes, _sr: int, _ch: int) -> None:
            chunks.append(bytes(audio))

        if spliced:
            observer.audio_processor.add_event_handler("on_audio_data", keep)
        else:
            observer.recording.add_listener(lambda audio, _sr, _ch: chunks.append(audio))
        return observer

    async def call(self, call_id: str, script: Script = SCRIPT) -> RoarkObserver:
        observer = self.observer(call_id)
        await run_simulated_call(observer, script=script)
        return observer

    def flush(self, timeout: float = 30.0) -> None:
        assert self.engine.force_flush(timeout), self.engine.stats()


def make_rig(
    tmp_path: Path,
    otel: Otel,
    *,
    api_key: str = KEY,
    transport: httpx.BaseTransport | None = None,
    **options: Any,
) -> tuple[Rig, Callable[[], None]]:
    roark = LocalRoark(data_dir=tmp_path / "roark", api_key=api_key).start()
    spool = tmp_path / "spool"
    settings = RoarkSettings(api_key=api_key, base_url=roark.base_url, spool_dir=spool)
    # Created first, so the exporter below gets this engine (and its fast backoffs).
    engine = engine_for(settings, transport=transport, options=dataclasses.replace(FAST, **options))
    exporter = RoarkSpanExporter(api_key=api_key, base_url=roark.base_url, spool_dir=spool)
    assert exporter.engine is engine
    otel.add(SimpleSpanProcessor(exporter))

    def close() -> None:
        exporter.shutdown()
        roark.stop()

    return Rig(roark, engine, exporter, spool), close


@pytest.fixture
def rig_factory(tmp_path: Path, otel: Otel) -> Iterator[Callable[..., Rig]]:
    closers: list[Callable[[], None]] = []

    def make(**options: Any) -> Rig:
        rig, close = make_rig(tmp_path, otel, **options)
        closers.append(close)
        return rig

    yield make
    for close in closers:
        close()


@pytest.fixture
def rig(rig_factory: Callable[..., Rig]) -> Rig:
    return rig_factory()


def delivered_counts(roark: LocalRoark, call_id: str) -> Counter[str]:
    """How often the receiver accepted each event and each chunk (presigns are not deliveries)."""
    seen: Counter[str] = Counter()
    for r in roark.requests(call_id):
        if r["status"] != 200 or r["endpoint"] == "presign":
            continue
        seen[r["event"] if r["endpoint"] == "webhook" else f"chunk {r['chunkIndex']}"] += 1
    return seen


def duplicates(roark: LocalRoark, call_id: str) -> int:
    return sum(n - 1 for n in delivered_counts(roark, call_id).values())


def assert_complete(rig: Rig, call_id: str, *, max_duplicates: int = 0) -> dict[str, Any]:
    """Full transcript and tools, byte-exact WAV, every item received once (or idempotently)."""
    call = rig.roark.wait_for_call_ended(call_id, timeout=30)
    ended = call["ended"]
    assert [(t["role"], t["content"]) for t in ended["transcript"]] == EXPECTED_TURNS
    assert [(t["kind"], t["toolCallId"]) for t in ended["toolCalls"]] == [
        ("tool_call", "call_1"),
        ("tool_result", "call_1"),
    ]
    assert call["started"] is not None and call["flags"] == []
    assert call["missing_chunks"] == [] and call["late_chunks"] == []
    recorded = b"".join(rig.recorded[call_id])
    assert recorded, "the recorder produced no audio"
    wav = rig.roark.wav_bytes(call_id)
    assert wav is not None and wav[44:] == recorded, "recording is not byte-exact"
    seen = delivered_counts(rig.roark, call_id)
    assert seen["call-started"] >= 1 and seen["call-ended"] >= 1
    assert sorted(k for k in seen if k.startswith("chunk")) == [
        f"chunk {i}" for i in range(len(call["chunks"]))
    ]
    assert duplicates(rig.roark, call_id) <= max_duplicates, seen
    assert call["duplicates"]["chunks_replaced"] == {}
    return call


def assert_spool_empty(rig: Rig) -> None:
    wait_until(lambda: rig.engine.outbox.pending_keys() == [], what="spool drained")
    assert rig.engine.outbox.dead_keys() == []


# -- the fault matrix -------------------------------------------------------------------------


async def test_roark_down_for_the_whole_call_then_back(rig: Rig) -> None:
    rig.roark.faults.set_down(True)
    await rig.call("down-1")
    assert not rig.engine.force_flush(0.3)  # kept, not delivered, not given up
    assert rig.roark.call("down-1") is None
    assert (rig.spool / "v1" / "calls" / call_key("down-1") / "end.json").exists()
    rig.roark.faults.set_down(False)
    rig.flush()
    assert_complete(rig, "down-1")
    assert_spool_empty(rig)


@pytest.mark.parametrize("seed", [1, 2])
async def test_intermittent_5xx(rig: Rig, seed: int) -> None:
    for i, status in enumerate((500, 502, 503)):
        rig.roark.faults.fail_fraction(0.1, status, seed=seed * 10 + i)  # ~27 % in all
    await rig.call(f"5xx-{seed}")
    rig.flush()
    assert_complete(rig, f"5xx-{seed}")
    failed = [r for r in rig.roark.requests(f"5xx-{seed}") if r["fault"] == "status"]
    assert failed, "the fault never fired"
    assert rig.engine.stats()["retried"] >= len(failed)
    assert_spool_empty(rig)


async def test_429_with_retry_after_is_honoured(rig: Rig) -> None:
    rig.roark.faults.fail_fraction(0.3, 429, retry_after=0.25, seed=7)
    await rig.call("429-1")
    rig.flush()
    assert_complete(rig, "429-1")
    reqs = rig.roark.requests("429-1")
    assert any(r["status"] == 429 for r in reqs)
    # After each 429 the same endpoint for this call was not asked again sooner than Retry-After.
    for i, r in enumerate(reqs):
        if r["status"] == 429:
            later = [x for x in reqs[i + 1 :] if x["endpoint"] == r["endpoint"]]
            if later:
                assert later[0]["time"] - r["time"] >= 0.2, (r, later[0])
    assert_spool_empty(rig)


async def test_responses_slower_than_the_client_timeout(rig_factory: Callable[..., Rig]) -> None:
    """The server handles a timed-out request after the client gave up: the retry is a
    duplicate the receiver absorbs (idempotent receipt); nothing is lost or replaced."""
    rig = rig_factory(request_timeout=0.3)
    rig.roark.faults.set_latency(0.6)
    await rig.call("slow-1")
    assert not rig.engine.force_flush(0.5)
    rig.roark.faults.set_latency(0)
    rig.flush()
    call = assert_complete(rig, "slow-1", max_duplicates=10_000)
    # Every duplicate is a request the client had timed out on, so it retried.
    assert duplicates(rig.roark, "slow-1") <= rig.engine.stats()["retried"]
    assert call["duplicates"]["chunks_replaced"] == {}
    assert_spool_empty(rig)


async def test_connections_reset_mid_request(rig: Rig) -> None:
    rig.roark.faults.drop_fraction(0.3, seed=3)
    await rig.call("reset-1")
    rig.flush()
    assert_complete(rig, "reset-1")
    assert any(r["fault"] == "drop" for r in rig.roark.requests("reset-1"))
    assert_spool_empty(rig)


async def test_all_faults_at_once_over_several_calls(rig: Rig) -> None:
    faults = rig.roark.faults
    faults.fail_fraction(0.1, 503, seed=11)
    faults.fail_fraction(0.1, 429, retry_after=0.1, seed=12)
    faults.drop_fraction(0.1, seed=13)
    faults.fail_fraction(0.2, 403, endpoint="upload", seed=14)  # refused presigned URL
    ids = [f"mixed-{i}" for i in range(3)]
    await asyncio.gather(*(rig.call(cid) for cid in ids))
    rig.flush()
    for cid in ids:
        assert_complete(rig, cid)
    assert_spool_empty(rig)


async def test_task_cancelled_while_call_ended_is_being_sent(rig: Rig) -> None:
    """Capture rule 18 under a slow Roark: cancelling the task loses nothing."""
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.task import PipelineParams, PipelineTask

    from pipecat_roark_otel.simulation import SimulatedCall

    rig.roark.faults.set_latency(0.2)
    observer = rig.observer("cancel-1", spliced=True)
    sim = SimulatedCall(SCRIPT)
    ending = asyncio.Event()

    async def slow_tail(_p: object, _audio: bytes, _sr: int, _ch: int) -> None:
        if sim.stt.done.is_set():  # the tail handed over at call end: call-ended is underway
            ending.set()
            await asyncio.sleep(0.5)

    observer.audio_processor.add_event_handler("on_audio_data", slow_tail)
    task = PipelineTask(
        Pipeline(sim.processors(observer.audio_processor)),
        params=PipelineParams(audio_out_sample_rate=24_000),
        observers=[observer],
        enable_tracing=True,
    )
    runner = asyncio.ensure_future(run(task))
    await asyncio.wait_for(ending.wait(), 30)
    await task.cancel()
    await asyncio.wait_for(runner, 30)
    await observer.aflush()  # waits for the same send, never a second one
    rig.roark.faults.set_latency(0)
    rig.flush()
    call = assert_complete(rig, "cancel-1")
    assert call["ended"]["callEndedReason"] == "agent-ended"
    assert_spool_empty(rig)


# -- keys and permanent refusals ----------------------------------------------------------------


async def test_rejected_key_pauses_quietly_then_resumes_in_the_same_process(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.roark.set_api_keys(["rk_test_someone_else"])
    with caplog.at_level(logging.INFO, logger="pipecat_roark_otel"):
        await rig.call("auth-1")
        wait_until(lambda: rig.engine.stats()["auth_paused"], what="auth pause")

        def refused() -> int:
            return sum(1 for r in rig.roark.requests() if r["status"] == 401)

        before, t0 = refused(), time.monotonic()
        time.sleep(1.5)  # observe the retry rate while paused (no sync: the wait *is* the test)
        window = time.monotonic() - t0
        # One probe at a time, one per probe interval (0.3 s here), not a storm.
        assert refused() - before <= 1 + window / FAST.probe_interval, refused() - before
        assert rig.roark.call("auth-1") is None
        assert rig.engine.outbox.dead_keys() == []
        rig.roark.set_api_keys([KEY])
        rig.flush()
    assert_complete(rig, "auth-1")
    lines = [r.getMessage() for r in caplog.records if "rejected the API key" in r.getMessage()]
    assert (
        lines == [lines[0]]
        and "Roark rejected the API key (HTTP 401): invalid or revoked key" in (lines[0])
    )
    assert KEY not in caplog.text and "rk_test_someone_else" not in caplog.text
    assert any("accepted the API key again" in r.getMessage() for r in caplog.records)
    assert_spool_empty(rig)


async def test_403_on_the_api_is_an_auth_pause_too(rig: Rig) -> None:
    rig.roark.faults.fail_fraction(1.0, 403, endpoint="webhook")
    await rig.call("auth-403")
    wait_until(lambda: rig.engine.stats()["auth_paused"], what="auth pause")
    assert rig.engine.outbox.dead_keys() == []
    rig.roark.faults.clear()
    rig.flush()
    assert_complete(rig, "auth-403")
    assert_spool_empty(rig)


async def test_other_4xx_is_dead_lettered_once_and_the_cli_resends_it(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    observer = rig.observer("dead-1")
    running = asyncio.ensure_future(run_simulated_call(observer, script=SCRIPT))
    # call-started is out while the call runs; the next webhook is call-ended: refuse it.
    await asyncio.to_thread(
        wait_until, lambda: (rig.roark.call("dead-1") or {}).get("status") == "started"
    )
    rig.roark.faults.fail_next(1, 422, endpoint="webhook")
    with caplog.at_level(logging.WARNING, logger="pipecat_roark_otel"):
        await running
        rig.flush()
    refused = [r for r in rig.roark.requests("dead-1") if r["status"] == 422]
    assert len(refused) == 1  # not retried
    dead_lines = [r for r in caplog.records if "permanently rejected" in r.getMessage()]
    assert len(dead_lines) == 1
    assert "HTTP 422" in dead_lines[0].getMessage() and "dead-1" in dead_lines[0].getMessage()
    assert rig.roark.call("dead-1")["status"] == "started"  # type: ignore[index]

    cli = [sys.executable, "-m", "pipecat_roark_otel.exporter.deadletters"]
    spool = ["--spool-dir", str(rig.spool)]
    listed = subprocess.run([*cli, *spool, "list"], capture_output=True, text=True, check=True)
    assert "call=dead-1" in listed.stdout and "status=422" in listed.stdout
    shown = subprocess.run(
        [*cli, *spool, "show", "dead-1"], capture_output=True, text=True, check=True
    )
    assert "injected fault: 422" in shown.stdout  # the server's reason, kept
    resent = subprocess.run(
        [*cli, *spool, "resend", "dead-1"], capture_output=True, text=True, check=True
    )
    assert "moved" in resent.stdout
    rig.engine.start()  # the running engine picks the resent items up on its next scan
    rig.flush()
    assert_complete(rig, "dead-1")
    assert_spool_empty(rig)


async def test_a_refused_chunk_is_dead_lettered_and_its_resend_completes_the_recording(
    rig: Rig,
) -> None:
    rig.roark.faults.fail_next(1, 422, endpoint="presign")  # the first chunk, refused for good
    await rig.call("dead-chunk")
    rig.flush()
    call = rig.roark.wait_for_call_ended("dead-chunk", timeout=30)
    assert call["missing_chunks"] == [0]  # the rest of the call went on without it
    info = DeadLetters(rig.engine.outbox).info(call_key("dead-chunk"))
    assert info is not None and info["items"] == ["chunk 0"]
    assert info["reasons"]["chunk 0"]["status"] == 422
    assert deadletters.main(["--spool-dir", str(rig.spool), "resend", "dead-chunk"]) == 0
    rig.engine.start()
    rig.flush()
    call = rig.roark.call("dead-chunk")
    assert call is not None and call["missing_chunks"] == [] and call["late_chunks"] == [0]
    wav = rig.roark.wav_bytes("dead-chunk")
    assert wav is not None and wav[44:] == b"".join(rig.recorded["dead-chunk"])
    assert duplicates(rig.roark, "dead-chunk") == 0
    assert_spool_empty(rig)
