"""Hostile things found on disk in a spool (a review of the delivery rewrite): each is a
logged, counted rejection at worst, never a call that stops being delivered."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipecat_roark_otel.config import RoarkSettings
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter._engine import Engine
from pipecat_roark_otel.exporter._outbox import LAYOUT, call_key
from pipecat_roark_otel.exporter._payloads import CallStarted

from .support import FAST

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
    body = CallStarted(pipecatCallId=CALL, eventTimestamp=TS, agentId="agent-1").wire()
    engine.put_started(CALL, body)
    for i, part in enumerate(parts):
        assert engine.submit_chunk(CALL, i, part, sample_rate=16000, num_channels=1)
    payload = {
        "event": "call-ended",
        "pipecatCallId": CALL,
        "eventTimestamp": "2025-01-01T00:01:00+00:00",
        "callStartedAt": TS,
        "callEndedAt": "2025-01-01T00:01:00+00:00",
        "callEndedReason": "agent-ended",
        "recordingSampleRate": 16000,
        "recordingNumChannels": 1,
    }
    engine.put_end(CALL, {"segments": 0, "chunks": len(parts), "payload": payload})


@pytest.mark.xfail(
    strict=True,
    reason="Spares.keep lets an OSError other than FileNotFoundError (spare/ not a folder, "
    "not writable) out of mark_sent after the log line: the call is paused as 'cannot "
    "record a delivery' for ever; keep should unlink the delivered file instead",
)
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
