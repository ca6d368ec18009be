"""Process death and process sharing: SIGKILL, restart on the same spool, several processes.

Children are real Python processes running simulated calls through real
PipelineTasks; the local Roark runs here, so the receiver's view outlives them.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipecat_roark_otel.config import RoarkSettings
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter._delivery import DeliveryOptions
from pipecat_roark_otel.exporter._engine import Engine
from pipecat_roark_otel.exporter._outbox import Outbox, call_key

from .support import EXPECTED_TURNS, FAST, wait_until
from .test_faults import delivered_counts, duplicates

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")]

KEY = "rk_test_restart"

# argv: key base_url spool out_dir mode call_id...
# mode: "hang" waits to be killed; "flush[:seconds]" flushes (60 s by default) and exits.
CHILD = """
import asyncio, dataclasses, sys, time
from pathlib import Path
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from pipecat_roark_otel import RoarkObserver, _errors
from pipecat_roark_otel.config import RoarkSettings
from pipecat_roark_otel.exporter import RoarkSpanExporter
from pipecat_roark_otel.exporter._delivery import DeliveryOptions
from pipecat_roark_otel.exporter._engine import engine_for
from pipecat_roark_otel.simulation import DEFAULT_SCRIPT, run_simulated_call

key, base, spool, out, mode, *ids = sys.argv[1:]
_errors.set_raise_internal_errors(True)
settings = RoarkSettings(api_key=key, base_url=base, spool_dir=Path(spool))
engine_for(settings, options=DeliveryOptions(**OPTIONS))
exporter = RoarkSpanExporter(api_key=key, base_url=base, spool_dir=spool)
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

async def one(cid):
    observer = RoarkObserver(agent_id="restart-bot", conversation_id=cid)
    chunks = []
    observer.recording.add_listener(lambda audio, _sr, _ch: chunks.append(audio))
    await run_simulated_call(observer, script=dataclasses.replace(DEFAULT_SCRIPT, speed=8.0))
    part = Path(out, cid + ".part")  # renamed whole: the parent may kill us once it exists
    part.write_bytes(b"".join(chunks))
    part.rename(Path(out, cid + ".pcm"))

async def main():
    await asyncio.gather(*(one(c) for c in ids))

asyncio.run(main())
print("CALLS DONE", flush=True)
if mode == "hang":
    while True:
        time.sleep(1)
ok = exporter.force_flush(int(float(mode.partition(":")[2] or 60) * 1000))
exporter.engine.shutdown(1.0)
exporter.shutdown()
sys.exit(0 if ok else 3)
"""

OPTIONS = {
    f.name: getattr(FAST, f.name)
    for f in dataclasses.fields(DeliveryOptions)
    if getattr(FAST, f.name) != f.default
}


def spawn(tmp_path: Path, roark: LocalRoark, spool: Path, mode: str, *ids: str, key: str = KEY):
    out = tmp_path / "recorded"
    out.mkdir(exist_ok=True)
    log = open(tmp_path / f"child-{ids[0]}.log", "wb")  # noqa: SIM115 - closed with the process
    code = CHILD.replace("**OPTIONS", f"**{OPTIONS!r}")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, key, roark.base_url, str(spool), str(out), mode, *ids],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.log = log  # type: ignore[attr-defined]
    return proc


def end_on_disk(spool: Path, call_id: str) -> bool:
    return (spool / "v1" / "calls" / call_key(call_id) / "end.json").exists()


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL
    proc.log.close()  # type: ignore[attr-defined]


@pytest.fixture
def roark(tmp_path: Path) -> Iterator[LocalRoark]:
    with LocalRoark(data_dir=tmp_path / "roark", api_key=KEY) as server:
        yield server


@pytest.fixture
def engines() -> Iterator[Callable[..., Engine]]:
    made: list[Engine] = []

    def make(spool: Path, base_url: str, *, api_key: str = KEY, **options: Any) -> Engine:
        settings = RoarkSettings(api_key=api_key, base_url=base_url, spool_dir=spool)
        engine = Engine(settings, options=dataclasses.replace(FAST, **options))
        made.append(engine)
        engine.start()
        return engine

    yield make
    for engine in made:
        engine.shutdown(2.0)


def assert_complete_once(roark: LocalRoark, tmp_path: Path, call_id: str) -> None:
    call = roark.wait_for_call_ended(call_id, timeout=30)
    ended = call["ended"]
    assert [(t["role"], t["content"]) for t in ended["transcript"]] == EXPECTED_TURNS
    assert len(ended["toolCalls"]) == 2
    assert call["flags"] == [] and call["missing_chunks"] == []
    recorded = (tmp_path / "recorded" / f"{call_id}.pcm").read_bytes()
    wav = roark.wav_bytes(call_id)
    assert recorded and wav is not None and wav[44:] == recorded
    seen = delivered_counts(roark, call_id)
    assert seen["call-started"] == seen["call-ended"] == 1, seen
    assert duplicates(roark, call_id) == 0, seen
    assert set(call["duplicates"]["chunks"].values()) <= {0}
    assert call["duplicates"]["call-started"] == call["duplicates"]["call-ended"] == 0


def test_sigkill_after_call_ended_is_on_disk_then_a_new_process_delivers_once(
    tmp_path: Path, roark: LocalRoark, engines: Callable[..., Engine]
) -> None:
    spool = tmp_path / "spool"
    roark.faults.set_down(True)  # nothing can leave before the kill
    child = spawn(tmp_path, roark, spool, "hang", "killed-1")
    wait_until(
        lambda: end_on_disk(spool, "killed-1") and (tmp_path / "recorded/killed-1.pcm").exists(),
        timeout=60,
        what="call-ended in the outbox",
    )
    kill(child)
    assert roark.call("killed-1") is None
    roark.faults.set_down(False)
    engine = engines(spool, roark.base_url)
    assert engine.force_flush(30)
    assert_complete_once(roark, tmp_path, "killed-1")
    assert Outbox(spool).pending_keys() == []


def test_sigkill_right_after_put_end_loses_no_audio(
    tmp_path: Path, roark: LocalRoark, engines: Callable[..., Engine]
) -> None:
    """Chunks wait in memory for the delivery thread; call-ended on disk must imply they are too."""
    spool = tmp_path / "spool"
    pcm = bytes(range(256)) * 1024  # 256 KiB, the recorder's chunk size
    n = 24
    script = f"""
import os, signal
from pathlib import Path
from pipecat_roark_otel.config import RoarkSettings
from pipecat_roark_otel.exporter._engine import Engine
s = RoarkSettings(api_key={KEY!r}, base_url={roark.base_url!r}, spool_dir=Path({str(spool)!r}))
e = Engine(s)
e.put_started("burst", {{"event": "call-started", "pipecatCallId": "burst",
    "eventTimestamp": "2025-01-01T00:00:00+00:00", "agentId": "a"}})
pcm = bytes(range(256)) * 1024
for i in range({n}):
    assert e.submit_chunk("burst", i, pcm, sample_rate=16000, num_channels=2)
e.put_end("burst", {{"segments": 0, "chunks": {n}, "payload": {{"event": "call-ended",
    "pipecatCallId": "burst", "eventTimestamp": "2025-01-01T00:01:00+00:00",
    "callStartedAt": "2025-01-01T00:00:00+00:00", "callEndedAt": "2025-01-01T00:01:00+00:00",
    "callEndedReason": "agent-ended", "recordingSampleRate": 16000, "recordingNumChannels": 2}}}})
os.kill(os.getpid(), signal.SIGKILL)
"""
    roark.faults.set_down(True)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    roark.faults.set_down(False)
    engine = engines(spool, roark.base_url, grace_period=1.0)
    assert engine.force_flush(30)
    call = roark.wait_for_call_ended("burst", timeout=10)
    assert call["missing_chunks"] == [] and len(call["chunks"]) == n
    assert roark.wav_bytes("burst")[44:] == pcm * n  # type: ignore[index]
    assert engine.stats()["chunks_missing"] == 0


def test_rejected_key_survives_a_sigkill_and_goes_out_once_accepted(
    tmp_path: Path, roark: LocalRoark, engines: Callable[..., Engine]
) -> None:
    spool = tmp_path / "spool"
    roark.set_api_keys(["rk_test_not_yours"])
    child = spawn(tmp_path, roark, spool, "hang", "auth-killed")
    wait_until(
        lambda: (
            end_on_disk(spool, "auth-killed")
            and (tmp_path / "recorded/auth-killed.pcm").exists()
            and any(r["status"] == 401 for r in roark.requests())
        ),
        timeout=60,
        what="call on disk and the key refused",
    )
    kill(child)
    log = (tmp_path / "child-auth-killed.log").read_text(errors="replace")
    assert "Roark rejected the API key (HTTP 401)" in log
    assert KEY not in log
    assert Outbox(spool).dead_keys() == []
    roark.set_api_keys([KEY])
    engine = engines(spool, roark.base_url)
    assert engine.force_flush(30)
    assert_complete_once(roark, tmp_path, "auth-killed")


def test_rejected_key_kept_across_a_clean_restart(
    tmp_path: Path, roark: LocalRoark, engines: Callable[..., Engine]
) -> None:
    spool = tmp_path / "spool"
    roark.set_api_keys(["rk_test_not_yours"])
    child = spawn(tmp_path, roark, spool, "flush:1", "auth-clean")
    assert child.wait(90) == 3  # flush timed out: still pending, exited cleanly
    child.log.close()  # type: ignore[attr-defined]
    assert end_on_disk(spool, "auth-clean") and roark.call("auth-clean") is None
    roark.set_api_keys([KEY])
    engine = engines(spool, roark.base_url)
    assert engine.force_flush(30)
    assert_complete_once(roark, tmp_path, "auth-clean")


def test_several_processes_share_one_spool_without_corruption_or_duplicates(
    tmp_path: Path, roark: LocalRoark
) -> None:
    spool = tmp_path / "spool"
    roark.faults.fail_fraction(0.2, 503, seed=5)
    roark.faults.drop_fraction(0.1, seed=6)
    groups = [("p1-a", "p1-b"), ("p2-a", "p2-b"), ("p3-a", "p3-b")]
    children = [spawn(tmp_path, roark, spool, "flush", *ids) for ids in groups]
    t0 = time.monotonic()
    for child in children:
        assert child.wait(120) == 0, (tmp_path / "child-p1-a.log").read_text()[-3000:]
        child.log.close()  # type: ignore[attr-defined]
    roark.faults.clear()
    print(f"3 processes x 2 calls in {time.monotonic() - t0:.1f}s")
    for ids in groups:
        for cid in ids:
            assert_complete_once(roark, tmp_path, cid)
    outbox = Outbox(spool)
    assert outbox.pending_keys() == [] and outbox.dead_keys() == []
    leftovers = [p for p in (spool / "v1" / "calls").rglob("*")]
    assert leftovers == []


def test_a_call_directory_caught_before_its_first_file_is_not_an_orphan(
    tmp_path: Path, roark: LocalRoark, engines: Callable[..., Engine]
) -> None:
    """Another process's writer between mkdir and call.json: the reader must wait, not bury it."""
    spool = tmp_path / "spool"
    (spool / "v1" / "calls" / call_key("early")).mkdir(parents=True)
    engine = engines(spool, roark.base_url)
    assert engine.force_flush(5)
    assert engine.outbox.dead_keys() == []
    assert not (spool / "v1" / "done" / call_key("early")).exists()
    engine.put_started(
        "early",
        {
            "event": "call-started",
            "pipecatCallId": "early",
            "eventTimestamp": "2025-01-01T00:00:00+00:00",
            "agentId": "a",
        },
    )
    assert engine.force_flush(5)
    assert roark.call("early")["status"] == "started"  # type: ignore[index]


def test_sigkill_mid_delivery_loses_nothing_and_repeats_at_most_the_request_in_flight(
    tmp_path: Path, roark: LocalRoark, engines: Callable[..., Engine]
) -> None:
    spool = tmp_path / "spool"
    roark.faults.set_latency(0.25)  # delivery lags the call, so the kill lands mid-delivery
    child = spawn(tmp_path, roark, spool, "hang", "midway")
    wait_until(
        lambda: (
            end_on_disk(spool, "midway")
            and (tmp_path / "recorded/midway.pcm").exists()
            and bool((roark.call("midway") or {}).get("chunks"))
        ),
        timeout=60,
        what="call on disk, delivery under way",
    )
    kill(child)
    before = delivered_counts(roark, "midway")
    assert before["call-ended"] == 0, "delivery finished before the kill; nothing was tested"
    roark.faults.set_latency(0)
    engine = engines(spool, roark.base_url)
    assert engine.force_flush(30)
    call = roark.wait_for_call_ended("midway", timeout=10)
    recorded = (tmp_path / "recorded" / "midway.pcm").read_bytes()
    assert roark.wav_bytes("midway")[44:] == recorded  # type: ignore[index]
    assert [(t["role"], t["content"]) for t in call["ended"]["transcript"]] == EXPECTED_TURNS
    # What the dead process had recorded as sent is never sent again; only the one request
    # it had in flight when killed may reach the receiver twice.
    assert duplicates(roark, "midway") <= 1
    assert call["duplicates"]["chunks_replaced"] == {}
