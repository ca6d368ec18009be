"""Hostile input at the local Roark: each bad request a bounded 4xx; nothing accepted is lost."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipecat_roark_otel.devserver import LocalRoark

from .support import (
    PCM,
    PRESIGN,
    WEBHOOK,
    auth_headers,
    ended_body,
    presign,
    started_body,
)

# -- bodies that used to drop the connection ------------------------------------------------

_DEEP = b'{"event": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
_HUGE_INT = b'{"event": "call-started", "agentId": ' + b"9" * 5000 + b"}"


@pytest.mark.parametrize(
    "content",
    [_DEEP, _HUGE_INT, b'{"a": NaN}', b"\xff\xfe{}", b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}"],
    ids=["100k-nested-lists", "5000-digit-integer", "nan", "not-utf8", "41-deep"],
)
@pytest.mark.parametrize("path", [WEBHOOK, PRESIGN])
def test_unparseable_json_is_400_not_a_dropped_connection(
    roark: LocalRoark, api: httpx.Client, content: bytes, path: str
) -> None:
    resp = api.post(path, content=content, headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert "malformed JSON" in resp.json()["error"]
    assert roark.calls() == []
    # The server is still there for the next request.
    assert api.post(WEBHOOK, json=started_body("after")).status_code == 200


def test_a_sample_rate_of_2_to_the_40_is_422_and_builds_no_wav(
    roark: LocalRoark, api: httpx.Client
) -> None:
    with httpx.Client() as s3:
        assert s3.put(presign(api, "c1", 0), content=b"\0\0", headers=PCM).status_code == 200
    body = ended_body("c1", recordingSampleRate=2**40, recordingNumChannels=2)
    resp = api.post(WEBHOOK, json=body)
    assert resp.status_code == 422
    assert "recordingSampleRate" in resp.json()["error"]
    call = roark.call("c1")
    assert call is not None and call["ended"] is None and call["wav_path"] is None


def test_unauthenticated_bodies_are_never_parsed(roark: LocalRoark) -> None:
    with httpx.Client(base_url=roark.base_url, headers=auth_headers("rk_test_stranger")) as anon:
        for content in (_DEEP, _HUGE_INT, json.dumps(started_body("c1")).encode()):
            resp = anon.post(WEBHOOK, content=content)
            assert resp.status_code == 401
    assert [(r["status"], r["pipecatCallId"], r["event"]) for r in roark.requests()] == [
        (401, None, None)
    ] * 3


def test_bad_lengths_and_chunked_bodies_get_an_answer(roark: LocalRoark) -> None:
    key = roark.api_key
    heads = f"x-roark-api-key: {key}\r\nauthorization: Bearer {key}\r\n"
    for head, body in (
        ("content-length: -1\r\n", b"{}"),
        ("content-length: abc\r\n", b"{}"),
        ("transfer-encoding: chunked\r\n", b"2\r\n{}\r\n0\r\n\r\n"),
    ):
        request = f"POST {WEBHOOK} HTTP/1.1\r\nhost: x\r\n{heads}{head}\r\n".encode() + body
        with socket.create_connection(("127.0.0.1", roark.port), timeout=10) as sock:
            sock.sendall(request)
            status_line = sock.recv(4096).split(b"\r\n", 1)[0]
        assert status_line.split()[1] in (b"400", b"411"), (head, status_line)
    assert roark.calls() == []


# -- pages never allocate by a wire number ---------------------------------------------------


def test_a_stored_huge_chunk_index_does_not_make_pages_allocate(tmp_path: Path) -> None:
    """A damaged or old store holding index 2**62: every page answers at once."""
    data = tmp_path / "roark"
    with (
        LocalRoark(data) as roark,
        httpx.Client(base_url=roark.base_url, headers=auth_headers(roark.api_key)) as api,
        httpx.Client() as s3,
    ):
        api.post(WEBHOOK, json=started_body("c1"))
        s3.put(presign(api, "c1", 0), content=b"\0\0", headers=PCM)
    with sqlite3.connect(data / "roark.sqlite3") as db:
        db.execute(
            "INSERT INTO chunks(call_id, idx, nbytes, sha256, received) VALUES (?, ?, 2, '', 0)",
            ("c1", 2**62),
        )
    with LocalRoark(data) as roark, httpx.Client(base_url=roark.base_url, timeout=10) as anon:
        start = time.monotonic()
        for path in ("/api/calls/c1", "/api/calls", "/", "/calls/c1"):
            assert anon.get(path).status_code == 200, path
        assert time.monotonic() - start < 5.0
        call = anon.get("/api/calls/c1").json()["data"]
        assert call["missing_chunks"][:2] == [1, 2]
        assert len(call["missing_chunks"]) == 1000  # listed up to a bound, never 2**62 of them
        assert "missing_chunks" in call["flags"]


# -- concurrent uploads to one presigned URL -------------------------------------------------


def _race(url: str, bodies: list[bytes]) -> dict[int, int]:
    """PUT each body to ``url`` at the same moment; the status of each."""
    results: dict[int, int] = {}
    barrier = threading.Barrier(len(bodies))

    def put(i: int) -> None:
        with httpx.Client(timeout=10) as s3:
            barrier.wait()
            results[i] = s3.put(url, content=bodies[i], headers=PCM).status_code

    threads = [threading.Thread(target=put, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_concurrent_puts_to_one_url_store_exactly_the_accepted_body(
    roark: LocalRoark, api: httpx.Client
) -> None:
    size = 256 * 1024
    for attempt in range(20):
        call_id = f"race-{attempt}"
        url = presign(api, call_id, 0)
        bodies = [bytes([1 + attempt % 100]) * size, bytes([200]) * size]
        results = _race(url, bodies)
        assert sorted(results.values()) == [200, 403], results
        accepted = bodies[next(i for i, s in results.items() if s == 200)]
        body = ended_body(call_id, recordingSampleRate=16000, recordingNumChannels=1)
        assert api.post(WEBHOOK, json=body).status_code == 200
        wav = roark.wav_bytes(call_id)
        assert wav is not None
        with wave.open(io.BytesIO(wav)) as w:
            assert w.readframes(w.getnframes()) == accepted, f"attempt {attempt}"
        call = roark.call(call_id)
        assert call is not None and call["chunks"] == {0: size}


# -- private files, keys ---------------------------------------------------------------------


def test_data_dir_is_0700_and_files_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        with (
            LocalRoark(tmp_path / "roark") as roark,
            httpx.Client(base_url=roark.base_url, headers=auth_headers(roark.api_key)) as api,
        ):
            api.post(WEBHOOK, json=started_body("c1"))
            with httpx.Client() as s3:
                s3.put(presign(api, "c1", 0), content=b"\0\0", headers=PCM)
            api.post(
                WEBHOOK, json=ended_body("c1", recordingSampleRate=8000, recordingNumChannels=1)
            )
            assert roark.wav_bytes("c1") is not None
            modes = {
                p: (p.is_dir(), stat.S_IMODE(p.stat().st_mode))
                for p in [roark.data_dir, *roark.data_dir.rglob("*")]
            }
    finally:
        os.umask(old)
    assert {p.suffix for p in modes} >= {".pcm", ".wav", ".sqlite3-wal"}
    for p, (is_dir, mode) in modes.items():
        assert mode == (0o700 if is_dir else 0o600), f"{p}: {oct(mode)}"


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_dev_routes_need_the_key(roark: LocalRoark, method: str) -> None:
    with httpx.Client(base_url=roark.base_url) as anon:
        faults = anon.request(method, "/_dev/faults", json={"down": True})
        trace = anon.post("/_dev/calls/c1/trace", json={"traceId": "t"})
    assert (faults.status_code, trace.status_code) == (401, 401)
    assert roark.faults.snapshot()["down"] is False
    assert roark.call("c1") is None


def test_cli_takes_its_key_from_the_environment(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "pipecat_roark_otel.devserver", "--port", "0"]
    cmd += ["--data-dir", str(tmp_path)]
    env = {**os.environ, "ROARK_DEVSERVER_API_KEY": "rk_test_from_env"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.split()[line.split().index("on") + 1]
        with httpx.Client(base_url=url) as client:
            ok = client.post(
                WEBHOOK, json=started_body("c1"), headers=auth_headers("rk_test_from_env")
            )
            default = client.post(
                WEBHOOK, json=started_body("c2"), headers=auth_headers("rk_test_local")
            )
        assert (ok.status_code, default.status_code) == (200, 401)
        assert "rk_test_from_env" not in Path(f"/proc/{proc.pid}/cmdline").read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# -- arbitrary JSON at ingest ----------------------------------------------------------------

_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_json = st.recursive(
    _leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_fields = st.sampled_from(
    ["event", "pipecatCallId", "eventTimestamp", "agentId", "callStartedAt", "callEndedAt",
     "callEndedReason", "recordingSampleRate", "recordingNumChannels", "transcript", "toolCalls",
     "chunkIndex", "contentType"]
)  # fmt: skip
_call_id = st.text(min_size=1, max_size=20)
_PRESIGN_BODY = {"pipecatCallId": "p", "chunkIndex": 0, "contentType": "audio/pcm"}
_changes = st.dictionaries(_fields, _json, max_size=2)
_near_valid = st.one_of(
    st.builds(lambda d, c: {**started_body(c), **d}, _changes, _call_id),
    st.builds(lambda d, c: {**ended_body(c), **d}, _changes, _call_id),
    st.builds(lambda d: {**_PRESIGN_BODY, **d}, _changes),
    _json,
)  # fmt: skip


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=_near_valid, presign=st.booleans())
def test_arbitrary_json_at_ingest_gets_a_bounded_answer_and_accepted_data_is_kept(
    roark: LocalRoark, api: httpx.Client, body: Any, presign: bool
) -> None:
    start = time.monotonic()
    resp = api.post(PRESIGN if presign else WEBHOOK, json=body)
    assert time.monotonic() - start < 10.0
    assert resp.status_code in (200, 400, 422), resp.text
    if resp.status_code != 200 or presign:
        return
    call = roark.call(body["pipecatCallId"])
    assert call is not None
    kept = call["started"] if body["event"] == "call-started" else call["ended"]
    duplicate = resp.json()["data"]["duplicate"]
    assert duplicate or kept == body


def test_call_ids_never_escape_the_data_dir(roark: LocalRoark, api: httpx.Client) -> None:
    ids = ["../../etc/passwd", "a\x00b", "\u202e\U0001f600", "/abs", "..", "x" * 5000]
    with httpx.Client() as s3:
        for call_id in ids:
            assert api.post(WEBHOOK, json=started_body(call_id)).status_code == 200
            assert s3.put(presign(api, call_id, 0), content=b"\0\0", headers=PCM).status_code == 200
            body = ended_body(call_id, recordingSampleRate=8000, recordingNumChannels=1)
            assert api.post(WEBHOOK, json=body).status_code == 200
            quoted = quote(call_id, safe="").replace(".", "%2E")  # else ".." is resolved away
            assert api.get(f"/api/calls/{quoted}").status_code == 200
    inside = roark.data_dir.resolve()
    for path in roark.data_dir.rglob("*"):
        assert path.resolve().is_relative_to(inside)
    assert {c["pipecatCallId"] for c in roark.calls()} == set(ids)
