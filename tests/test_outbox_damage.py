"""The outbox survives its own disk: damaged files, a full disk, poisoned entries, the CLI.

Each case is a finding of issue 15, reproduced against the real local Roark.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from pipecat_roark_otel import _errors
from pipecat_roark_otel import semconv as sc
from pipecat_roark_otel.audio._chunks import ChunkSink
from pipecat_roark_otel.config import RoarkSettings
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter, _lock, deadletters
from pipecat_roark_otel.exporter._engine import Engine
from pipecat_roark_otel.exporter._files import append_line, write_atomic
from pipecat_roark_otel.exporter._lock import LockMode
from pipecat_roark_otel.exporter._outbox import Outbox, call_key

from .support import FAST, wait_until
from .test_delivery import KEY, end, segment, started


class Disk:
    """The outbox's write seams, with a switch that makes them fail like a full disk."""

    def __init__(self) -> None:
        self.full = threading.Event()
        self.log_full = threading.Event()  # only sent-log appends fail
        self.refused = 0

    def _check(self, path: Path, *, log: bool = False) -> None:
        if self.full.is_set() or (log and self.log_full.is_set()):
            self.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

    def write(self, path: Path, data: bytes) -> None:
        self._check(path)
        write_atomic(path, data)

    def append(self, path: Path, data: bytes) -> None:
        self._check(path, log=True)
        append_line(path, data)


@pytest.fixture
def make_engine(tmp_path: Path, roark: LocalRoark) -> Iterator[Callable[..., Engine]]:
    made: list[Engine] = []

    def make(disk: Disk | None = None, lock_mode: LockMode = "auto", **options: Any) -> Engine:
        spool = tmp_path / "spool"
        seams = {"write": disk.write, "append": disk.append} if disk else {}
        settings = RoarkSettings(api_key=KEY, base_url=roark.base_url, spool_dir=spool)
        outbox = Outbox(spool, lock_mode=lock_mode, **seams)
        engine = Engine(settings, options=dataclasses.replace(FAST, **options), outbox=outbox)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.shutdown(2.0)


def call_dir(engine: Engine, cid: str) -> Path:
    return engine.outbox.calls_dir / call_key(cid)


def sent_events(roark: LocalRoark, cid: str, event: str) -> int:
    return sum(1 for r in roark.requests(cid) if r["status"] == 200 and r.get("event") == event)


def test_a_truncated_segment_costs_only_that_segment(
    make_engine: Callable[..., Engine], roark: LocalRoark, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine()
    engine.put_started("c1", started("c1"))
    for i, text in enumerate(("first", "second", "third")):
        engine.put_segment("c1", i, segment(text))
    damaged = call_dir(engine, "c1") / "seg-000001.json"
    damaged.write_bytes(damaged.read_bytes()[:17])  # truncated mid-record
    with caplog.at_level(logging.WARNING, logger="pipecat_roark_otel"):
        engine.put_end("c1", end("c1", segments=3))
        assert engine.force_flush(10)
    ended = roark.wait_for_call_ended("c1", timeout=5)["ended"]
    assert [t["content"] for t in ended["transcript"]] == ["first", "third"]
    lines = [r.getMessage() for r in caplog.records]
    assert any("local corruption" in m and "seg-000001.json" in m for m in lines), lines
    assert not any("permanently rejected" in m for m in lines), lines
    assert engine.stats()["dropped"] == {"local_corruption": 1}


def test_invalid_utf8_in_the_sent_log_is_repaired_not_retried_forever(
    make_engine: Callable[..., Engine], roark: LocalRoark, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine()
    engine.put_started("c1", started("c1"))
    assert engine.force_flush(10)
    log = call_dir(engine, "c1") / "sent.log"
    with open(log, "ab") as f:
        f.write(b"\xff\xfe garbage \xc3\n")
    # Later writes to that call are not dropped.
    engine.put_segment("c1", 0, segment("after the damage"))
    with caplog.at_level(logging.WARNING, logger="pipecat_roark_otel"):
        engine.put_end("c1", end("c1"))
        assert engine.force_flush(10)
    ended = roark.wait_for_call_ended("c1", timeout=5)["ended"]
    assert [t["content"] for t in ended["transcript"]] == ["after the damage"]
    assert sent_events(roark, "c1", "call-started") == 1
    assert any(
        "local corruption" in r.getMessage() and "sent log" in r.getMessage()
        for r in caplog.records
    )
    assert engine.stats()["dropped"] == {"local_corruption": 1}
    wait_until(lambda: engine.outbox.pending_keys() == [])


def no_folder_flock(monkeypatch: pytest.MonkeyPatch) -> None:
    """flock refuses folders, as on NFS (flock there is a byte-range lock, which needs a file
    open for writing); files still lock."""
    real = _lock._flock_nb

    def flock(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EBADF, "Bad file descriptor")
        real(fd)

    monkeypatch.setattr(_lock, "_flock_nb", flock)


@pytest.mark.parametrize("locks", ["excl", "flock, folders refused"])
def test_a_spool_that_cannot_lock_waits_for_the_disk_instead_of_killing_delivery(
    make_engine: Callable[..., Engine],
    roark: LocalRoark,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    locks: str,
) -> None:
    """A read-only or vanished spool fails the lock file itself: a wait, never a dead thread.

    Lock files are used in excl mode and where a call's folder cannot be flocked; elsewhere
    the lock is flock on the call's folder, and there is no lock file to fail."""
    if locks == "excl":
        engine = make_engine(lock_mode="excl")
    else:
        no_folder_flock(monkeypatch)
        engine = make_engine()
    locks = engine.outbox.locks_dir
    locks.rmdir()
    locks.write_bytes(b"")  # a file where the folder was: every lock attempt is an OSError
    with caplog.at_level(logging.WARNING, logger="pipecat_roark_otel"):
        engine.put_started("c1", started("c1"))
        wait_until(
            lambda: any("cannot lock" in r.getMessage() for r in caplog.records),
            what="the lock failure logged",
        )
    assert sent_events(roark, "c1", "call-started") == 0
    locks.unlink()
    locks.mkdir(mode=0o700)
    engine.put_end("c1", end("c1", segments=0))
    assert engine.force_flush(10)
    roark.wait_for_call_ended("c1", timeout=5)
    assert sent_events(roark, "c1", "call-started") == 1


def test_a_full_disk_pauses_the_call_instead_of_resending(
    make_engine: Callable[..., Engine], roark: LocalRoark
) -> None:
    disk = Disk()
    disk.log_full.set()
    engine = make_engine(disk)
    engine.put_started("c1", started("c1"))
    engine.put_segment("c1", 0, segment("hello"))
    wait_until(lambda: sent_events(roark, "c1", "call-started") == 1)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.0:  # a window to watch for repeats: the wait is the test
        time.sleep(0.05)
    assert sent_events(roark, "c1", "call-started") == 1
    assert disk.refused >= 1
    disk.log_full.clear()
    engine.put_end("c1", end("c1"))
    assert engine.force_flush(10)
    roark.wait_for_call_ended("c1", timeout=5)
    assert sent_events(roark, "c1", "call-started") == 1
    assert sent_events(roark, "c1", "call-ended") == 1


def test_a_chunk_the_disk_refuses_is_counted_once_and_its_index_stays_used(
    make_engine: Callable[..., Engine], roark: LocalRoark
) -> None:
    disk = Disk()
    engine = make_engine(disk, handoff_limit=0, grace_period=0.3)  # chunks go straight to disk
    engine.put_started("c1", started("c1"))
    sink = ChunkSink()
    sink.attach(engine, "c1")
    sink.add(b"\x01\x00" * 100, 16000, 1)
    disk.full.set()
    sink.add(b"\x02\x00" * 100, 16000, 1)
    disk.full.clear()
    sink.add(b"\x03\x00" * 100, 16000, 1)
    assert (sink.chunks, sink.failures) == (3, 1)  # the lost one consumed index 1
    assert engine.stats()["dropped"] == {"audio_disk_error": 1}
    assert dict(_errors.dropped) == {"audio_disk_error": 1}
    engine.put_end("c1", end("c1", segments=0, chunks=3))
    call = roark.wait_for_call_ended("c1", timeout=10)
    assert call["missing_chunks"] == [1]  # Roark sees the gap


@pytest.mark.parametrize("attr", [sc.CALL_SEGMENT_COUNT, sc.RECORDING_CHUNKS])
def test_a_huge_count_on_the_wire_is_a_counted_rejection(
    attr: str, tmp_path: Path, roark: LocalRoark, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = RoarkSpanExporter(KEY, roark.base_url, tmp_path / "spool")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer(sc.INSTRUMENTATION_SCOPE)
    attrs = {sc.CONVERSATION_ID: "huge", attr: 2**62}
    with (
        caplog.at_level(logging.WARNING, logger="pipecat_roark_otel"),
        tracer.start_as_current_span(sc.SPAN_CALL, attributes=attrs),
    ):
        pass
    assert exporter.stats()["dropped"] == {"invalid_record": 1}
    assert any("rejected" in r.getMessage() for r in caplog.records)
    assert exporter.engine.outbox.pending_keys() == []
    exporter.shutdown()


def test_a_poisoned_spool_entry_is_quarantined_not_a_crash_loop(
    make_engine: Callable[..., Engine], roark: LocalRoark, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    outbox = Outbox(spool)
    outbox.put_started("p1", started("p1"))
    outbox.put_segment("p1", 0, segment("kept"))
    d = outbox.calls_dir / call_key("p1")
    record = end("p1") | {"segments": 2**62, "chunks": 2**62}
    (d / "end.json").write_text(json.dumps(record))
    (d / "seg-4611686018427387904.json").write_text("{}")  # an index nobody may range over
    engine = make_engine(orphan_timeout=0.5)
    engine.start()
    ended = roark.wait_for_call_ended("p1", timeout=10)["ended"]
    assert ended["callEndedReason"] == "orphaned"
    assert [t["content"] for t in ended["transcript"]] == ["kept"]
    assert engine.stats()["dropped"].get("invalid_record") == 1


def test_the_deadletters_tool_touches_only_dead_letters_inside_its_spool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool = tmp_path / "spool"
    outbox = Outbox(spool)
    outbox.put_started("live", started("live"))
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("x")
    live = call_key("live")
    cli = ["--spool-dir", str(spool)]
    for argv in (
        ["purge", ".."],
        ["purge", "../.."],
        ["purge", str(elsewhere)],
        ["purge", "../calls/" + live],
        ["show", "../calls/" + live],
        ["resend", "../calls/" + live],
        ["purge", live],  # a live call's key: not a dead letter
    ):
        assert deadletters.main(cli + argv) == 1, argv
    assert "no dead letters" in capsys.readouterr().err
    assert (elsewhere / "precious").exists()
    assert outbox.pending_keys() == [live]


def test_a_spool_left_by_the_previous_version_is_delivered_once(
    make_engine: Callable[..., Engine], roark: LocalRoark, tmp_path: Path
) -> None:
    """Until now the lock was a file per call (``locks/<key>.lock``, left behind by a killed
    process) and the tombstone an empty file: such a spool is delivered as it stands."""
    spool = tmp_path / "spool" / "v1"
    calls, locks, done = spool / "calls", spool / "locks", spool / "done"

    def old_call(cid: str, *, sent: bytes, chunks: int = 0) -> Path:
        d = calls / call_key(cid)
        d.mkdir(parents=True, mode=0o700)
        (d / "call.json").write_text(json.dumps({"callId": cid}))
        (d / "started.json").write_text(json.dumps(started(cid)))
        (d / "seg-000000.json").write_text(json.dumps(segment(f"{cid} said")))
        for i in range(chunks):
            (d / f"chunk-{i:06d}.pcm").write_bytes(bytes([i + 1]) * 3200)
        (d / "end.json").write_text(json.dumps(end(cid, chunks=chunks)))
        if sent:
            (d / "sent.log").write_bytes(sent)
        return d

    old_call("half-sent", sent=b"started\n")
    old_call("with-audio", sent=b"", chunks=2)
    old_call("killed-mid-call", sent=b"started\nchunk 0\n", chunks=2).joinpath(
        "chunk-000000.pcm"
    ).unlink()  # delivered: the old version dropped the bytes after the log line
    locks.mkdir(parents=True, mode=0o700)
    for cid in ("half-sent", "killed-mid-call"):
        (locks / f"{call_key(cid)}.lock").write_bytes(b"")  # its holder was killed
    done.mkdir(parents=True, mode=0o700)
    (done / call_key("finished-before")).write_bytes(b"")  # the old empty tombstone

    engine = make_engine()
    engine.put_started("finished-before", started("finished-before"))  # a late duplicate
    assert engine.force_flush(10)
    for cid in ("half-sent", "with-audio", "killed-mid-call"):
        call = roark.wait_for_call_ended(cid, timeout=10)
        assert [t["content"] for t in call["ended"]["transcript"]] == [f"{cid} said"]
        assert sent_events(roark, cid, "call-ended") == 1
    assert sent_events(roark, "half-sent", "call-started") == 0  # the log said so
    assert sent_events(roark, "killed-mid-call", "call-started") == 0
    assert sent_events(roark, "with-audio", "call-started") == 1
    uploads = [r for r in roark.requests("killed-mid-call") if r["chunkIndex"] is not None]
    assert {r["chunkIndex"] for r in uploads} == {1}
    with_audio = roark.call("with-audio")
    assert with_audio is not None and sorted(with_audio["chunks"]) == [0, 1]
    assert roark.call("finished-before") is None
    wait_until(lambda: engine.outbox.pending_keys() == [], what="the spool emptied")
