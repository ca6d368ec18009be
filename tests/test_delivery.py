"""Delivery: per-call order, retries, auth pause, dead letters, restart, deadlines.

Two seams: ``httpx.MockTransport`` for exact request shapes, and the real local
Roark over HTTP (faults switched on it) for everything that involves time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, get_value

from pipecat_roark_otel.config import RoarkSettings
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import deadletters
from pipecat_roark_otel.exporter._engine import Engine, engine_for
from pipecat_roark_otel.exporter._outbox import Outbox, call_key
from pipecat_roark_otel.exporter._payloads import CallStarted, TranscriptTurn

from .support import FAST, wait_until

KEY = "rk_test_local"
TS = "2025-01-01T00:00:00+00:00"


def started(cid: str) -> dict[str, Any]:
    return CallStarted(pipecatCallId=cid, eventTimestamp=TS, agentId="agent-1").wire()


def segment(*contents: str) -> dict[str, Any]:
    turns = [
        TranscriptTurn(
            role="user", content=c, timestamp=TS, endTimestamp=TS, audioOffsetMs=i * 10
        ).wire()
        for i, c in enumerate(contents)
    ]
    return {
        "entries": [
            {"seq": i, "kind": "turn", "onset_ns": i, "record": t} for i, t in enumerate(turns)
        ]
    }


def end(cid: str, *, segments: int = 1, chunks: int = 0) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "event": "call-ended",
        "pipecatCallId": cid,
        "eventTimestamp": "2025-01-01T00:01:00+00:00",
        "callStartedAt": TS,
        "callEndedAt": "2025-01-01T00:01:00+00:00",
        "callEndedReason": "agent-ended",
    }
    if chunks:
        payload |= {"recordingSampleRate": 16000, "recordingNumChannels": 2}
    return {"segments": segments, "chunks": chunks, "payload": payload}


PCM = b"\x01\x00\x02\x00" * 1000


def whole_call(engine: Engine, cid: str, *, chunks: int = 2, chunks_first: bool = False) -> None:
    def audio() -> None:
        for i in range(chunks):
            assert engine.submit_chunk(cid, i, PCM, sample_rate=16000, num_channels=2)

    if chunks_first:
        audio()
    engine.put_started(cid, started(cid))
    if not chunks_first:
        audio()
    engine.put_segment(cid, 0, segment("hello", "world"))
    engine.put_end(cid, end(cid, chunks=chunks))


def status(roark: LocalRoark, cid: str) -> str | None:
    call = roark.call(cid)
    return None if call is None else str(call["status"])


@pytest.fixture
def engines() -> Iterator[Callable[..., Engine]]:
    made: list[Engine] = []

    def make(
        spool: Path,
        base_url: str,
        *,
        transport: httpx.BaseTransport | None = None,
        api_key: str = KEY,
        **options: Any,
    ) -> Engine:
        opts = dataclasses.replace(FAST, **options)
        settings = RoarkSettings(api_key=api_key, base_url=base_url, spool_dir=spool)
        engine = Engine(settings, transport=transport, options=opts)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.shutdown(2.0)


# -- exact request shapes through a MockTransport ------------------------------------------


class FakeRoark:
    """Records what arrives; ``script`` maps a request kind to statuses to answer first."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []
        self.requests: list[httpx.Request] = []
        self.script: dict[str, list[httpx.Response]] = {}
        self.suppressed: list[object] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.suppressed.append(get_value(_SUPPRESS_INSTRUMENTATION_KEY))
        if request.url.host == "s3.test":
            kind, what = "put", request.url.path
        elif request.url.path.endswith("/chunk-upload-url"):
            body = json.loads(request.content)
            kind, what = "presign", body["chunkIndex"]
        else:
            body = json.loads(request.content)
            kind, what = body["event"], body
        with self.lock:
            self.requests.append(request)
            queued = self.script.get(kind)
            if queued:
                return queued.pop(0)
            self.log.append((kind, what))
        if kind == "presign":
            url = f"https://s3.test/up/{body['pipecatCallId']}/{what}?sig=x"
            reply = {"uploadUrl": url}
            return httpx.Response(200, json={"data": reply} if what % 2 == 0 else reply)
        return httpx.Response(200, json={"ok": True})

    def kinds(self) -> list[str]:
        with self.lock:
            return [k for k, _ in self.log]


BASE = "https://roark.test"


def test_order_holds_when_chunks_arrive_before_call_started(
    tmp_path: Path, engines: Callable[..., Engine]
) -> None:
    fake = FakeRoark()
    engine = engines(tmp_path / "spool", BASE, transport=httpx.MockTransport(fake))
    assert engine.submit_chunk("c1", 0, PCM)
    assert engine.submit_chunk("c1", 1, PCM)
    assert engine.force_flush(5)  # audio on disk; nothing deliverable before call-started
    assert fake.kinds() == []
    engine.put_started("c1", started("c1"))
    engine.put_segment("c1", 0, segment("hi"))
    engine.put_end("c1", end("c1", chunks=2))
    assert engine.force_flush(5)
    assert fake.kinds() == [
        "call-started",
        "presign",
        "put",
        "presign",
        "put",
        "call-ended",
    ]
    ended = fake.log[-1][1]
    assert [t["content"] for t in ended["transcript"]] == ["hi"]
    assert ended["recordingSampleRate"] == 16000
    assert engine.outbox.pending_keys() == []
    assert engine.stats()["delivered"] == 4
    assert all(s is True for s in fake.suppressed)  # our HTTP is never telemetry


def _on_event(
    fake: FakeRoark, event: str, then: Callable[[], None]
) -> Callable[[httpx.Request], httpx.Response]:
    """``fake``, running ``then`` after it answers each such webhook event."""

    def handler(request: httpx.Request) -> httpx.Response:
        reply = fake(request)
        if request.url.path.endswith("/pipecat") and json.loads(request.content)["event"] == event:
            then()
        return reply

    return handler


def test_writes_landing_while_a_session_delivers_go_out_once_in_order(
    tmp_path: Path, engines: Callable[..., Engine]
) -> None:
    """A session advances its snapshot in memory after each delivery; what is written
    meanwhile (here: the audio and the end, as call-started goes out) still goes, once."""
    fake = FakeRoark()
    holder: list[Engine] = []

    def meanwhile() -> None:
        engine = holder[0]
        for i in range(2):
            engine.put_chunk("c1", i, PCM, sample_rate=16000, num_channels=2)
        engine.put_segment("c1", 0, segment("hi"))
        engine.put_end("c1", end("c1", chunks=2))

    handler = _on_event(fake, "call-started", meanwhile)
    engine = engines(tmp_path / "spool", BASE, transport=httpx.MockTransport(handler))
    holder.append(engine)
    engine.put_started("c1", started("c1"))
    assert engine.force_flush(5)
    assert fake.kinds() == ["call-started", "presign", "put", "presign", "put", "call-ended"]
    assert engine.outbox.pending_keys() == []
    assert engine.stats()["calls_completed"] == 1


def test_a_chunk_landing_while_call_ended_goes_out_is_sent_not_retired(
    tmp_path: Path, engines: Callable[..., Engine]
) -> None:
    """The session completes a call without reading it all again, but only if its folder
    holds nothing new: a chunk written during the call-ended request still goes out late."""
    fake = FakeRoark()
    holder: list[Engine] = []

    def meanwhile() -> None:
        holder[0].put_chunk("c1", 0, PCM, sample_rate=16000, num_channels=2)

    handler = _on_event(fake, "call-ended", meanwhile)
    engine = engines(tmp_path / "spool", BASE, transport=httpx.MockTransport(handler))
    holder.append(engine)
    engine.put_started("c1", started("c1"))
    engine.put_segment("c1", 0, segment("hi"))
    engine.put_end("c1", end("c1"))
    assert engine.force_flush(5)
    assert fake.kinds() == ["call-started", "call-ended", "presign", "put"]
    assert engine.outbox.pending_keys() == []


def test_headers_key_on_api_and_none_on_presigned_put(
    tmp_path: Path, engines: Callable[..., Engine]
) -> None:
    fake = FakeRoark()
    engine = engines(tmp_path / "spool", BASE, transport=httpx.MockTransport(fake))
    whole_call(engine, "c1", chunks=1)
    assert engine.force_flush(5)
    for request in fake.requests:
        if request.url.host == "s3.test":
            assert "authorization" not in request.headers
            assert "x-roark-api-key" not in request.headers
            assert request.headers["content-type"] == "audio/pcm"
            assert request.method == "PUT" and request.content == PCM
        else:
            assert request.headers["x-roark-api-key"] == KEY
            assert request.headers["authorization"] == f"Bearer {KEY}"
            assert str(request.url).startswith(f"{BASE}/v1/integrations/pipecat")


def test_a_request_left_hanging_frees_its_lane_for_other_calls(
    tmp_path: Path, engines: Callable[..., Engine]
) -> None:
    """One lane by default: a request Roark sits on must not hold up every other call."""
    fake = FakeRoark()
    release = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content).get("pipecatCallId") == "slow":
            assert release.wait(10)
        return fake(request)

    engine = engines(tmp_path / "spool", BASE, transport=httpx.MockTransport(handler), lanes=1)
    whole_call(engine, "slow", chunks=0)
    wait_until(lambda: engine.stats()["in_flight"] == 1)
    for cid in ("a", "b", "c"):
        whole_call(engine, cid, chunks=0)
    try:
        wait_until(lambda: fake.kinds().count("call-ended") == 3)
    finally:
        release.set()
    assert engine.force_flush(5)
    assert [what["pipecatCallId"] for kind, what in fake.log if kind == "call-ended"][-1] == "slow"


def test_retries_5xx_and_honours_retry_after(
    tmp_path: Path, engines: Callable[..., Engine]
) -> None:
    fake = FakeRoark()
    fake.script["call-started"] = [httpx.Response(500), httpx.Response(503)]
    fake.script["call-ended"] = [httpx.Response(429, headers={"retry-after": "0.3"})]
    engine = engines(tmp_path / "spool", BASE, transport=httpx.MockTransport(fake))
    t0 = time.monotonic()
    whole_call(engine, "c1", chunks=0)
    assert engine.force_flush(5)
    assert time.monotonic() - t0 >= 0.3
    assert fake.kinds() == ["call-started", "call-ended"]
    assert engine.stats()["retried"] == 3


def test_presign_without_upload_url_is_retried(
    tmp_path: Path, engines: Callable[..., Engine]
) -> None:
    fake = FakeRoark()
    fake.script["presign"] = [httpx.Response(200, json={"data": {"s3Key": "k"}})]
    engine = engines(tmp_path / "spool", BASE, transport=httpx.MockTransport(fake))
    whole_call(engine, "c1", chunks=1)
    assert engine.force_flush(5)
    assert fake.kinds() == ["call-started", "presign", "put", "call-ended"]


def test_an_invalid_record_is_left_out_not_the_call(
    tmp_path: Path, engines: Callable[..., Engine], caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeRoark()
    engine = engines(tmp_path / "spool", BASE, transport=httpx.MockTransport(fake))
    engine.put_started("c1", started("c1"))
    bad = segment("secret words", "fine")
    bad["entries"][0]["record"]["role"] = "robot"
    engine.put_segment("c1", 0, bad)
    engine.put_end("c1", end("c1"))
    with caplog.at_level(logging.WARNING, logger="pipecat_roark_otel"):
        assert engine.force_flush(5)
    assert fake.kinds() == ["call-started", "call-ended"]
    assert engine.outbox.dead_keys() == []
    assert "secret" not in caplog.text
    assert "c1" in caplog.text and "1 invalid record" in caplog.text


# -- against the local Roark ---------------------------------------------------------------


def test_whole_call_lands_in_order_with_audio(
    tmp_path: Path, engines: Callable[..., Engine], roark: LocalRoark
) -> None:
    engine = engines(tmp_path / "spool", roark.base_url)
    whole_call(engine, "c1", chunks=3, chunks_first=True)
    assert engine.force_flush(10)
    call = roark.call("c1")
    assert call is not None
    assert call["status"] == "ended" and call["flags"] == []
    assert call["chunks"] == {0: len(PCM), 1: len(PCM), 2: len(PCM)}
    assert call["duplicates"]["call-started"] == 0 and call["duplicates"]["chunks"] == {}
    wav = roark.wav_bytes("c1")
    assert wav is not None and wav.endswith(PCM * 3)
    assert [t["content"] for t in call["ended"]["transcript"]] == ["hello", "world"]


def test_transient_faults_are_ridden_out(
    tmp_path: Path, engines: Callable[..., Engine], roark: LocalRoark
) -> None:
    roark.faults.drop_next(1, endpoint="webhook")
    roark.faults.fail_next(1, 503, endpoint="presign")
    roark.faults.fail_next(2, 403, endpoint="upload")  # a refused presigned URL: re-presign
    roark.faults.fail_next(1, 429, endpoint="webhook", retry_after=0.1, retry_after_as_date=False)
    engine = engines(tmp_path / "spool", roark.base_url)
    whole_call(engine, "c1", chunks=1)
    assert engine.force_flush(10)
    call = roark.call("c1")
    assert call is not None and call["status"] == "ended" and call["chunks"] == {0: len(PCM)}
    assert call["duplicates"]["call-started"] == 0
    assert not engine.stats()["auth_paused"]
    presigns = [r for r in roark.requests("c1") if r["endpoint"] == "presign"]
    assert len(presigns) >= 3  # a fresh URL for every try


def test_persistently_expired_urls_are_retried_not_dead_lettered(
    tmp_path: Path, engines: Callable[..., Engine], roark: LocalRoark
) -> None:
    """Expiring URLs (a skewed clock) for a while: well past 5 refusals, nothing is lost."""
    roark.faults.expire_urls(True)
    engine = engines(tmp_path / "spool", roark.base_url)
    whole_call(engine, "c1", chunks=2)
    wait_until(
        lambda: sum(r["endpoint"] == "presign" for r in roark.requests("c1")) >= 8, timeout=20
    )
    assert engine.outbox.dead_keys() == []
    roark.faults.expire_urls(False)
    assert engine.force_flush(20)
    call = roark.call("c1")
    assert call is not None and call["status"] == "ended"
    assert call["chunks"] == {0: len(PCM), 1: len(PCM)}


def test_rejected_key_pauses_all_delivery_then_resumes(
    tmp_path: Path,
    engines: Callable[..., Engine],
    roark: LocalRoark,
    caplog: pytest.LogCaptureFixture,
) -> None:
    roark.set_api_keys(["rk_test_other"])
    engine = engines(tmp_path / "spool", roark.base_url)
    with caplog.at_level(logging.WARNING, logger="pipecat_roark_otel"):
        whole_call(engine, "c1", chunks=1)
        whole_call(engine, "c2", chunks=0)
        wait_until(lambda: engine.stats()["auth_paused"])
        assert not engine.force_flush(0.3)  # kept, pending
        assert roark.call("c1") is None
        assert engine.outbox.dead_keys() == []
        roark.set_api_keys([KEY])
        assert engine.force_flush(10)
    assert status(roark, "c1") == status(roark, "c2") == "ended"
    assert not engine.stats()["auth_paused"]
    lines = [r.getMessage() for r in caplog.records]
    assert any(
        "Roark rejected the API key (HTTP 401): invalid or revoked key; keeping" in x for x in lines
    )
    assert KEY not in caplog.text


def test_permanent_rejection_goes_to_dead_letters_and_cli_resends(
    tmp_path: Path,
    engines: Callable[..., Engine],
    roark: LocalRoark,
    caplog: pytest.LogCaptureFixture,
) -> None:
    roark.faults.fail_next(1, 422, endpoint="webhook")
    engine = engines(tmp_path / "spool", roark.base_url)
    with caplog.at_level(logging.WARNING, logger="pipecat_roark_otel"):
        engine.put_started("c1", started("c1"))
        assert engine.force_flush(5)
    assert "HTTP 422" in caplog.text and "c1" in caplog.text
    assert engine.stats()["dead_lettered"] == 1
    key = call_key("c1")
    assert engine.outbox.dead_keys() == [key]
    assert status(roark, "c1") in (None, "pending")
    assert deadletters.main(["--spool-dir", str(engine.outbox.root), "resend", key]) == 0
    engine.start()  # a running engine picks resent items up on its next scan
    engine.put_segment("c1", 0, segment("x"))
    engine.put_end("c1", end("c1"))
    assert engine.force_flush(5)
    call = roark.call("c1")
    assert call is not None and call["status"] == "ended" and call["flags"] == []


def test_restart_delivers_what_a_previous_engine_left_exactly_once(
    tmp_path: Path, engines: Callable[..., Engine], roark: LocalRoark
) -> None:
    spool = tmp_path / "spool"
    roark.faults.set_down(True)
    first = engines(spool, roark.base_url)
    for cid in ("c1", "c2"):
        whole_call(first, cid, chunks=2)
    t0 = time.monotonic()
    first.shutdown(0.5)
    assert time.monotonic() - t0 < 2.0
    assert roark.call("c1") is None
    assert len(Outbox(spool).pending_keys()) == 2  # all of it still on disk
    roark.faults.set_down(False)
    second = engines(spool, roark.base_url)
    second.start()
    assert second.force_flush(10)
    for cid in ("c1", "c2"):
        call = roark.call(cid)
        assert call is not None and call["status"] == "ended" and len(call["chunks"]) == 2
        assert call["duplicates"]["call-ended"] == 0
    assert Outbox(spool).pending_keys() == []


def test_two_processes_sharing_a_spool_deliver_each_item_once(
    tmp_path: Path, engines: Callable[..., Engine], roark: LocalRoark
) -> None:
    spool = tmp_path / "spool"
    outbox = Outbox(spool)
    ids = [f"call-{i}" for i in range(24)]
    for cid in ids:
        outbox.put_started(cid, started(cid))
        for i in range(2):
            outbox.put_chunk(cid, i, PCM)
        outbox.put_segment(cid, 0, segment("a"))
        outbox.put_end(cid, end(cid, chunks=2))
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from pipecat_roark_otel.config import RoarkSettings\n"
        "from pipecat_roark_otel.exporter._delivery import DeliveryOptions\n"
        "from pipecat_roark_otel.exporter._engine import Engine\n"
        "a = sys.argv\n"
        "s = RoarkSettings(api_key=a[1], base_url=a[2], spool_dir=Path(a[3]))\n"
        "e = Engine(s, options=DeliveryOptions(rescan_interval=0.1, backoff_base=0.01))\n"
        "e.start()\n"
        "ok = e.force_flush(20)\n"
        "e.shutdown(2)\n"
        "sys.exit(0 if ok else 3)\n"
    )
    with subprocess.Popen([sys.executable, "-c", script, KEY, roark.base_url, str(spool)]) as other:
        mine = engines(spool, roark.base_url)
        mine.start()
        assert mine.force_flush(20)
        assert other.wait(30) == 0
    for cid in ids:
        call = roark.call(cid)
        assert call is not None and call["status"] == "ended", cid
        assert call["duplicates"] == {
            "call-started": 0,
            "call-ended": 0,
            "chunks": {},
            "chunks_replaced": {},
        }
        assert call["flags"] == []
    assert outbox.pending_keys() == []


def test_missing_segment_is_given_up_after_the_grace_period(
    tmp_path: Path, engines: Callable[..., Engine], roark: LocalRoark
) -> None:
    engine = engines(tmp_path / "spool", roark.base_url, grace_period=0.3)
    engine.put_started("c1", started("c1"))
    engine.put_segment("c1", 1, segment("late half"))
    engine.put_end("c1", end("c1", segments=2))
    assert engine.force_flush(5)  # waiting for segment 0 is not pending work
    assert status(roark, "c1") == "started"
    ended = roark.wait_for_call_ended("c1", timeout=5)["ended"]
    assert [t["content"] for t in ended["transcript"]] == ["late half"]
    assert engine.stats()["segments_missing"] == 1


def test_orphaned_call_is_ended_with_what_arrived(
    tmp_path: Path, engines: Callable[..., Engine], roark: LocalRoark
) -> None:
    engine = engines(tmp_path / "spool", roark.base_url, orphan_timeout=0.4)
    engine.put_started("c1", started("c1"))
    assert engine.submit_chunk("c1", 0, PCM, sample_rate=16000, num_channels=2)
    engine.put_segment("c1", 0, segment("before the crash"))
    ended = roark.wait_for_call_ended("c1", timeout=5)["ended"]
    assert ended["callEndedReason"] == "orphaned"
    assert ended["callStartedAt"] == TS and ended["recordingSampleRate"] == 16000
    assert [t["content"] for t in ended["transcript"]] == ["before the crash"]
    wait_until(lambda: engine.outbox.pending_keys() == [])


def test_deadlines_are_honoured_against_a_slow_server(
    tmp_path: Path, engines: Callable[..., Engine], roark: LocalRoark
) -> None:
    roark.faults.set_latency(1.5)
    engine = engines(tmp_path / "spool", roark.base_url)
    engine.put_started("c1", started("c1"))
    t0 = time.monotonic()
    assert not engine.force_flush(0.2)
    assert time.monotonic() - t0 < 0.6
    t0 = time.monotonic()
    engine.shutdown(0.3)
    assert time.monotonic() - t0 < 1.0
    # After shutdown audio still goes to disk, for the next process to deliver.
    assert engine.submit_chunk("c1", 0, PCM)
    assert Outbox(tmp_path / "spool").pending_keys() == [call_key("c1")]
    state = Outbox(tmp_path / "spool").read(call_key("c1"))
    assert state is not None and state.chunks == frozenset({0})


def test_audio_hand_off_is_bounded(tmp_path: Path, engines: Callable[..., Engine]) -> None:
    fake = FakeRoark()
    engine = engines(
        tmp_path / "spool", BASE, transport=httpx.MockTransport(fake), handoff_limit=len(PCM)
    )
    results = [engine.submit_chunk("c1", i, PCM) for i in range(50)]
    # Memory is bounded; what does not fit is written on the caller's thread, never dropped.
    assert all(results)
    stats = engine.stats()
    assert stats["handoff_bytes"] <= len(PCM) and stats["handoff_spilled"] > 0
    assert stats["dropped"] == {}
    engine.put_started("c1", started("c1"))
    assert engine.force_flush(5)
    assert engine.stats()["handoff_bytes"] == 0
    puts = [what for kind, what in fake.log if kind == "put"]
    assert sorted(puts) == sorted(f"/up/c1/{i}" for i in range(50))


def test_engine_for_shares_one_engine_per_destination(tmp_path: Path) -> None:
    settings = RoarkSettings(api_key=KEY, base_url=BASE, spool_dir=tmp_path / "spool")
    transport = httpx.MockTransport(FakeRoark())
    a = engine_for(settings, transport=transport)
    try:
        assert engine_for(settings) is a
        # Another key is another workspace: its own engine, on its own spool only.
        other = RoarkSettings(api_key="rk_test_2", base_url=BASE, spool_dir=tmp_path / "spool2")
        b = engine_for(other, transport=transport)
        assert b is not a
        b.shutdown(1)
        shared = RoarkSettings(api_key="rk_test_2", base_url=BASE, spool_dir=tmp_path / "spool")
        with pytest.raises(ValueError, match="spool_dir"):
            engine_for(shared, transport=transport)
    finally:
        a.shutdown(1)
    assert engine_for(settings, transport=transport) is not a  # after shutdown: a fresh one
    engine_for(settings).shutdown(1)


def test_many_calls_flow_in_parallel(
    tmp_path: Path, engines: Callable[..., Engine], roark: LocalRoark
) -> None:
    engine = engines(tmp_path / "spool", roark.base_url, workers=8)
    ids = [f"bulk-{i}" for i in range(100)]
    t0 = time.monotonic()
    for cid in ids:
        engine.put_started(cid, started(cid))
        engine.put_end(cid, end(cid, segments=0))
    assert engine.force_flush(20)
    elapsed = time.monotonic() - t0
    assert all(status(roark, cid) == "ended" for cid in ids)
    print(f"{len(ids) / elapsed:.0f} calls/s against the local Roark")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_delivers_with_its_own_thread(
    tmp_path: Path, engines: Callable[..., Engine], roark: LocalRoark
) -> None:
    engine = engines(tmp_path / "spool", roark.base_url)
    engine.put_started("parent", started("parent"))
    assert engine.force_flush(5)  # the parent's threads are running at fork time
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            engine.put_started("child", started("child"))
            code = 0 if engine.force_flush(5) else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 15
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0
    assert status(roark, "child") == "started"
