"""The chunk path on disk: a delivered chunk's file is written over by a later chunk.

Real files in a real spool, and real HTTP to the local Roark for what arrives.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipecat_roark_otel.config import RoarkSettings
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter._engine import Engine
from pipecat_roark_otel.exporter._files import write_atomic
from pipecat_roark_otel.exporter._items import chunk
from pipecat_roark_otel.exporter._outbox import Outbox, call_key
from pipecat_roark_otel.exporter._payloads import CallStarted
from pipecat_roark_otel.exporter._spares import KEPT

from .support import FAST, wait_until

KEY = "rk_test_local"
TS = "2025-01-01T00:00:00+00:00"
CALL = "call-1"


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "spool")


def spares(outbox: Outbox) -> list[Path]:
    return list(outbox.spare_dir.iterdir()) if outbox.spare_dir.exists() else []


def chunk_file(outbox: Outbox, index: int) -> Path:
    return outbox.calls_dir / call_key(CALL) / chunk(index).filename


def test_a_delivered_chunk_file_is_written_over_by_the_next_chunk(outbox: Outbox) -> None:
    key = call_key(CALL)
    outbox.put_chunk(CALL, 0, b"\x01" * 5000)
    inode = chunk_file(outbox, 0).stat().st_ino
    outbox.mark_sent(key, chunk(0))
    assert not chunk_file(outbox, 0).exists()
    assert len(list(outbox.spare_dir.iterdir())) == 1
    outbox.put_chunk(CALL, 1, b"\x02" * 3000)  # shorter, like a call's tail
    assert chunk_file(outbox, 1).stat().st_ino == inode  # no new file
    assert outbox.load_chunk(key, 1) == b"\x02" * 3000
    assert list(outbox.spare_dir.iterdir()) == []
    outbox.mark_sent(key, chunk(1))
    outbox.put_chunk(CALL, 2, b"\x03" * 7000)  # longer than the file it reuses
    assert outbox.load_chunk(key, 2) == b"\x03" * 7000
    assert sorted(os.listdir(outbox.calls_dir / key)) == [  # no tmp file left behind
        "call.json",  # the sent log is in it
        "chunk-000002.pcm",
    ]


def test_a_new_call_s_first_chunk_takes_a_spare_too(outbox: Outbox) -> None:
    outbox.put_chunk(CALL, 0, b"\x01" * 5000)
    inode = chunk_file(outbox, 0).stat().st_ino
    outbox.mark_sent(call_key(CALL), chunk(0))
    outbox.put_chunk("other", 0, b"\x02" * 100)  # its folder and call.json made first
    first = outbox.calls_dir / call_key("other") / "chunk-000000.pcm"
    assert first.stat().st_ino == inode
    assert outbox.load_chunk(call_key("other"), 0) == b"\x02" * 100
    assert outbox.call_id(call_key("other")) == "other"


def test_spare_files_are_bounded_and_a_dead_process_s_are_removed(outbox: Outbox) -> None:
    key = call_key(CALL)
    for i in range(KEPT + 3):
        outbox.put_chunk(CALL, i, b"\x05" * 100)
    for i in range(KEPT + 3):
        outbox.mark_sent(key, chunk(i))
    assert len(list(outbox.spare_dir.iterdir())) == KEPT
    outbox.recover()  # its own are kept
    assert len(list(outbox.spare_dir.iterdir())) == KEPT
    Outbox(outbox.root).recover()  # another process starting on this spool: not its own
    assert list(outbox.spare_dir.iterdir()) == []
    outbox.put_chunk(CALL, KEPT + 3, b"\x06" * 10)  # its spares gone under it: a new file
    assert outbox.load_chunk(key, KEPT + 3) == b"\x06" * 10
    outbox.spare_dir.rmdir()
    outbox.mark_sent(key, chunk(KEPT + 3))  # the folder is made again
    assert len(list(outbox.spare_dir.iterdir())) == 1


def test_a_spare_outlives_a_write_into_a_folder_retired_under_it(outbox: Outbox) -> None:
    # The call's folder can be retired between the outbox making it and the chunk's write
    # (``_put`` retries); the spare it was about to use must stay kept, not be dropped.
    kept = outbox._spares
    assert kept is not None
    outbox.put_chunk(CALL, 0, b"\x01" * 500)
    inode = chunk_file(outbox, 0).stat().st_ino
    outbox.mark_sent(call_key(CALL), chunk(0))
    gone = outbox.calls_dir / "retired-under-us" / "chunk-000000.pcm"
    with pytest.raises(FileNotFoundError):
        kept.write(gone, b"\x02" * 500)
    assert [p.stat().st_ino for p in spares(outbox)] == [inode]
    outbox.put_chunk("other", 0, b"\x03" * 500)
    other = outbox.calls_dir / call_key("other") / "chunk-000000.pcm"
    assert other.stat().st_ino == inode  # still reused
    assert outbox.load_chunk(call_key("other"), 0) == b"\x03" * 500


def test_two_outboxes_on_one_spool_never_share_a_spare(tmp_path: Path) -> None:
    mine, theirs = Outbox(tmp_path / "spool"), Outbox(tmp_path / "spool")
    mine.put_chunk(CALL, 0, b"\x01" * 100)
    inode = chunk_file(mine, 0).stat().st_ino
    mine.mark_sent(call_key(CALL), chunk(0))
    theirs.put_chunk("other", 0, b"\x02" * 100)
    assert (theirs.calls_dir / call_key("other") / "chunk-000000.pcm").stat().st_ino != inode
    assert len(list(mine.spare_dir.iterdir())) == 1


def test_a_write_seam_writes_every_chunk_itself(tmp_path: Path) -> None:
    written: list[str] = []

    def write(path: Path, data: bytes | memoryview) -> None:
        written.append(Path(path).name)
        write_atomic(path, data)

    outbox = Outbox(tmp_path / "spool", write=write)
    outbox.put_chunk(CALL, 0, b"\x01" * 100)
    outbox.mark_sent(call_key(CALL), chunk(0))
    outbox.put_chunk(CALL, 1, b"\x02" * 100)
    assert written.count("chunk-000001.pcm") == 1
    assert not outbox.spare_dir.exists()


@pytest.fixture
def engine(tmp_path: Path, roark: LocalRoark) -> Iterator[Engine]:
    settings = RoarkSettings(api_key=KEY, base_url=roark.base_url, spool_dir=tmp_path / "spool")
    engine = Engine(settings, options=dataclasses.replace(FAST, grace_period=30.0))
    yield engine
    engine.shutdown(2.0)


def _mapped(data: bytes) -> memoryview:
    """A chunk as the recorder hands it over: a read-only view of an anonymous mapping."""
    m = mmap.mmap(-1, len(data))
    m.write(data)
    return memoryview(m).toreadonly()


def test_chunks_written_over_delivered_ones_arrive_byte_exact(
    engine: Engine, roark: LocalRoark
) -> None:
    sizes = [40_000, 40_000, 12_346, 60_002, 2]  # shorter and longer than the file reused
    parts = [os.urandom(n) for n in sizes]
    body = CallStarted(pipecatCallId=CALL, eventTimestamp=TS, agentId="agent-1").wire()
    engine.put_started(CALL, body)
    for i, part in enumerate(parts):
        assert engine.submit_chunk(CALL, i, _mapped(part), sample_rate=16000, num_channels=2)
        wait_until(lambda i=i: i in ((roark.call(CALL) or {}).get("chunks") or {}), what="chunk")
        if i == 0:
            wait_until(lambda: bool(spares(engine.outbox)), what="a spare file")
    payload = {
        "event": "call-ended",
        "pipecatCallId": CALL,
        "eventTimestamp": "2025-01-01T00:01:00+00:00",
        "callStartedAt": TS,
        "callEndedAt": "2025-01-01T00:01:00+00:00",
        "callEndedReason": "agent-ended",
        "recordingSampleRate": 16000,
        "recordingNumChannels": 2,
    }
    engine.put_end(CALL, {"segments": 0, "chunks": len(parts), "payload": payload})
    assert engine.force_flush(10)
    call = roark.call(CALL)
    assert call is not None and call["status"] == "ended" and call["flags"] == []
    assert call["chunks"] == dict(enumerate(sizes))
    wav = roark.wav_bytes(CALL)
    assert wav is not None and wav.endswith(b"".join(parts))


def test_shutdown_leaves_no_spare_file_behind(tmp_path: Path, roark: LocalRoark) -> None:
    settings = RoarkSettings(api_key=KEY, base_url=roark.base_url, spool_dir=tmp_path / "spool")
    engine = Engine(settings, options=FAST)
    body = CallStarted(pipecatCallId=CALL, eventTimestamp=TS, agentId="agent-1").wire()
    engine.put_started(CALL, body)
    assert engine.submit_chunk(CALL, 0, _mapped(b"\x07" * 1000), sample_rate=16000, num_channels=2)
    wait_until(lambda: bool(spares(engine.outbox)), what="a spare file")
    engine.shutdown(2.0)
    assert spares(engine.outbox) == []


# argv: key base_url spool; stdin: the two chunks in hex. Delivers chunk 0, waits for a
# line (the parent takes Roark down meanwhile), persists chunk 1 over chunk 0's file (the
# call's end record makes its audio durable first), prints both inodes and dies.
KILLED_AFTER_PERSIST = """
import mmap, os, signal, sys, time
from pathlib import Path
from pipecat_roark_otel.config import RoarkSettings
from pipecat_roark_otel.exporter._engine import Engine
from pipecat_roark_otel.exporter._outbox import call_key
key, base, spool = sys.argv[1:]
e = Engine(RoarkSettings(api_key=key, base_url=base, spool_dir=Path(spool)))
def mapped(data):
    m = mmap.mmap(-1, len(data))
    m.write(data)
    return memoryview(m).toreadonly()
parts = [bytes.fromhex(h) for h in sys.stdin.readline().split()]
e.put_started("killed", {"event": "call-started", "pipecatCallId": "killed",
    "eventTimestamp": "2025-01-01T00:00:00+00:00", "agentId": "a"})
assert e.submit_chunk("killed", 0, mapped(parts[0]), sample_rate=16000, num_channels=2)
spare = e.outbox.spare_dir
deadline = time.monotonic() + 20
while not (spare.is_dir() and any(spare.iterdir())):
    assert time.monotonic() < deadline, "chunk 0 was never delivered"
    time.sleep(0.01)
kept = next(spare.iterdir()).stat().st_ino
print("delivered", flush=True)
sys.stdin.readline()
assert e.submit_chunk("killed", 1, mapped(parts[1]), sample_rate=16000, num_channels=2)
e.put_end("killed", {"segments": 0, "chunks": 2, "payload": {"event": "call-ended",
    "pipecatCallId": "killed", "eventTimestamp": "2025-01-01T00:01:00+00:00",
    "callStartedAt": "2025-01-01T00:00:00+00:00", "callEndedAt": "2025-01-01T00:01:00+00:00",
    "callEndedReason": "agent-ended", "recordingSampleRate": 16000, "recordingNumChannels": 2}})
written = (e.outbox.calls_dir / call_key("killed") / "chunk-000001.pcm").stat().st_ino
print(kept, written, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")
def test_a_chunk_written_over_a_spare_survives_a_kill_before_its_put(
    tmp_path: Path, roark: LocalRoark
) -> None:
    spool = tmp_path / "spool"
    parts = [os.urandom(50_000), os.urandom(30_001)]
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_AFTER_PERSIST, KEY, roark.base_url, str(spool)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(" ".join(p.hex() for p in parts) + "\n")
    child.stdin.flush()
    assert child.stdout.readline().strip() == "delivered"
    roark.faults.set_down(True)  # chunk 1 is never PUT by the child
    child.stdin.write("\n")
    child.stdin.flush()
    kept, written = child.stdout.readline().split()
    assert child.wait(30) == -signal.SIGKILL, child.stderr.read() if child.stderr else ""
    assert kept == written  # chunk 1 went to disk over chunk 0's file
    assert set((roark.call("killed") or {}).get("chunks") or {}) == {0}
    roark.faults.set_down(False)
    settings = RoarkSettings(api_key=KEY, base_url=roark.base_url, spool_dir=spool)
    engine = Engine(settings, options=FAST)
    try:
        assert engine.force_flush(20)
        call = roark.wait_for_call_ended("killed", timeout=10)
        assert call["missing_chunks"] == [] and call["chunks"] == {0: 50_000, 1: 30_001}
        wav = roark.wav_bytes("killed")
        assert wav is not None and wav.endswith(parts[0] + parts[1])
        assert call["duplicates"]["chunks"] == {}
    finally:
        engine.shutdown(2.0)
