"""What delivery meets on disk (a review of the delivery rewrite): hostile bytes are a
logged, counted rejection at worst, never a call that stops being delivered; what the
previous version left is delivered as it stands."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipecat_roark_otel.config import RoarkSettings
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import deadletters
from pipecat_roark_otel.exporter._engine import Engine
from pipecat_roark_otel.exporter._outbox import LAYOUT, call_key

from .support import FAST
from .test_delivery import end, segment, started
from .test_outbox_damage import sent_events

KEY = "rk_test_local"
TS = "2025-01-01T00:00:00+00:00"
CALL = "call-hostile"


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def engine(spool: Path, roark: LocalRoark) -> Iterator[Engine]:
    settings = RoarkSettings(api_key=KEY, base_url=roark.base_url, spool_dir=spool)
    engine = Engine(settings, options=dataclasses.replace(FAST, grace_period=30.0))
    yield engine
    engine.shutdown(2.0)


def _deliver_a_call(engine: Engine, parts: list[bytes]) -> None:
    engine.put_started(CALL, started(CALL))
    for i, part in enumerate(parts):
        assert engine.submit_chunk(CALL, i, part, sample_rate=16000, num_channels=2)
    engine.put_end(CALL, end(CALL, segments=0, chunks=len(parts)))


def test_a_spare_folder_that_is_a_file_never_stops_a_call(
    spool: Path, engine: Engine, roark: LocalRoark
) -> None:
    (spool / LAYOUT / "spare").write_bytes(b"garbage, not a folder")
    parts = [os.urandom(3000), os.urandom(2000)]
    _deliver_a_call(engine, parts)
    assert engine.force_flush(10)
    call = roark.call(CALL)
    assert call is not None and call["status"] == "ended"
    assert call["chunks"] == {0: 3000, 1: 2000}
    assert (engine.outbox.done_dir / call_key(CALL)).exists()
    assert not (engine.outbox.calls_dir / call_key(CALL)).exists()


@pytest.mark.parametrize(
    "identity",
    [
        b'{"callI',  # cut short in its identity line, no newline
        b"",  # empty
        b'{"callId": 5}\nchunk 0\n',  # not a string id, with a log
        b'{"callId": "call-hostile"}\nchunk 0\n\xff\xfechu\n',  # a damaged log line
    ],
)
def test_a_damaged_call_json_still_delivers_the_call_once(
    spool: Path, roark: LocalRoark, identity: bytes
) -> None:
    settings = RoarkSettings(api_key=KEY, base_url=roark.base_url, spool_dir=spool)
    folder = spool / LAYOUT / "calls" / call_key(CALL)
    folder.mkdir(mode=0o700, parents=True)
    (folder / "call.json").write_bytes(identity)
    engine = Engine(settings, options=dataclasses.replace(FAST, grace_period=30.0))
    try:
        _deliver_a_call(engine, [os.urandom(3000), os.urandom(2000)])
        assert engine.force_flush(10)
        call = roark.call(CALL)
        assert call is not None and call["status"] == "ended"
        # A log that says chunk 0 went already is believed: it is not sent again.
        sent = {1: 2000} if b"\nchunk 0\n" in identity else {0: 3000, 1: 2000}
        assert call["chunks"] == sent
        assert (engine.outbox.done_dir / call_key(CALL)).exists()
        assert not folder.exists()
    finally:
        engine.shutdown(2.0)


def test_a_dead_letter_of_the_previous_version_is_listed_and_resent_once(
    spool: Path, roark: LocalRoark
) -> None:
    """The previous version's dead store: call.json the identity alone (no newline), the
    sent log a sent.log copied in at completion, the tombstone an empty file."""
    cid = "old-orphan"
    key = call_key(cid)
    dead = spool / LAYOUT / "dead" / key
    dead.mkdir(parents=True, mode=0o700)
    (dead / "call.json").write_text(json.dumps({"callId": cid}))
    (dead / "started.json").write_text(json.dumps(started(cid)))
    (dead / "seg-000000.json").write_text(json.dumps(segment(f"{cid} said")))
    (dead / "end.json").write_text(json.dumps(end(cid)))
    (dead / "reason.json").write_text(json.dumps({"started": {"status": 503, "message": "x"}}))
    (dead / "sent.log").write_bytes(b"dead started\ndead segment 0\ndead ended\n")
    done = spool / LAYOUT / "done"
    done.mkdir(parents=True, mode=0o700)
    (done / key).write_bytes(b"")

    cli = [sys.executable, "-m", "pipecat_roark_otel.exporter.deadletters"]
    listed = subprocess.run(
        [*cli, "--spool-dir", str(spool), "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert listed.returncode == 0, listed.stderr
    assert key in listed.stdout and cid in listed.stdout
    assert deadletters.main(["--spool-dir", str(spool), "resend", key]) == 0

    settings = RoarkSettings(api_key=KEY, base_url=roark.base_url, spool_dir=spool)
    engine = Engine(settings, options=FAST)
    try:
        assert engine.force_flush(10)
        call = roark.wait_for_call_ended(cid, timeout=10)
        assert [t["content"] for t in call["ended"]["transcript"]] == [f"{cid} said"]
        assert sent_events(roark, cid, "call-started") == sent_events(roark, cid, "call-ended") == 1
        assert engine.outbox.pending_keys() == [] and engine.outbox.dead_keys() == []
    finally:
        engine.shutdown(2.0)
