"""Local Roark over real HTTP: auth, validation, presigned uploads, WAV assembly, faults, pages."""

from __future__ import annotations

import io
import random
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx
import pytest

import pipecat_roark_otel.devserver as devserver
from pipecat_roark_otel.devserver import Faults, LocalRoark

from .support import (
    PCM,
    PRESIGN,
    T0,
    WEBHOOK,
    auth_headers,
    ended_body,
    presign,
    started_body,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


def _upload(api: httpx.Client, s3: httpx.Client, call_id: str, index: int, data: bytes) -> None:
    resp = s3.put(presign(api, call_id, index), content=data, headers=PCM)
    assert resp.status_code == 200, resp.text


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _wav_frames(data: bytes) -> tuple[bytes, int, int, int]:
    with wave.open(io.BytesIO(data), "rb") as wav:
        return (
            wav.readframes(wav.getnframes()),
            wav.getframerate(),
            wav.getnchannels(),
            wav.getsampwidth(),
        )


def test_public_api_is_pinned() -> None:
    assert devserver.__all__ == ["Faults", "LocalRoark"]


# -- auth ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"x-roark-api-key": "rk_test_local"},
        {"authorization": "Bearer rk_test_local"},
        auth_headers("rk_test_wrong"),
        {"x-roark-api-key": "rk_test_local", "authorization": "Bearer rk_test_other"},
        {"x-roark-api-key": "rk_test_local", "authorization": "Basic rk_test_local"},
        {},
    ],
    ids=["no-bearer", "no-key-header", "wrong-key", "mismatch", "not-bearer", "none"],
)
def test_webhook_and_presign_need_both_auth_headers(
    roark: LocalRoark, headers: dict[str, str]
) -> None:
    with httpx.Client(base_url=roark.base_url, headers=headers) as client:
        hook = client.post(WEBHOOK, json=started_body("c1"))
        presign = client.post(
            PRESIGN, json={"pipecatCallId": "c1", "chunkIndex": 0, "contentType": "audio/pcm"}
        )
    assert (hook.status_code, presign.status_code) == (401, 401)
    assert "error" in hook.json()
    assert roark.calls() == []
    # Logged, but never parsed: a stranger's body names no call.
    logged = roark.requests()
    assert [(r["status"], r["pipecatCallId"]) for r in logged] == [(401, None), (401, None)]


def test_rotated_key_is_rejected_and_new_key_accepted(roark: LocalRoark, api: httpx.Client) -> None:
    assert api.post(WEBHOOK, json=started_body("c1")).status_code == 200
    roark.set_api_keys(["rk_test_new"])
    assert api.post(WEBHOOK, json=ended_body("c1")).status_code == 401
    assert roark.api_key == "rk_test_new"
    resp = api.post(WEBHOOK, json=ended_body("c1"), headers=auth_headers("rk_test_new"))
    assert resp.status_code == 200
    with pytest.raises(ValueError):
        roark.set_api_keys([])


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "status", "needle"),
    [
        (b'{"event": "call-started",', 400, "malformed JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'"call-started"', 400, "JSON object"),
    ],
)
def test_malformed_bodies_are_400_and_store_nothing(
    roark: LocalRoark, api: httpx.Client, content: bytes, status: int, needle: str
) -> None:
    resp = api.post(WEBHOOK, content=content, headers={"content-type": "application/json"})
    assert resp.status_code == status
    assert needle in resp.json()["error"]
    assert roark.calls() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (started_body("c1", agentId=42), "agentId"),
        ({k: v for k, v in started_body("c1").items() if k != "agentId"}, "agentId"),
        (started_body("c1", extraField=1), "extraField"),
        (started_body("c1", eventTimestamp="yesterday"), "eventTimestamp"),
        (started_body("c1", eventTimestamp="2025-01-01T10:00:00"), "eventTimestamp"),
        (started_body("c1", eventTimestamp="2025-01-01T12:00:00+02:00"), "eventTimestamp"),
        (ended_body("c1", callEndedReason=None), "callEndedReason"),
        ({k: v for k, v in ended_body("c1").items() if k != "callEndedAt"}, "callEndedAt"),
        (ended_body("c1", recordingSampleRate=16000), "recordingNumChannels"),
        (
            ended_body("c1", recordingSampleRate="16000", recordingNumChannels=1),
            "recordingSampleRate",
        ),
        (
            ended_body("c1", transcript=[{"role": "bot", "content": "x", "timestamp": T0}]),
            "transcript.0",
        ),
        ({**started_body("c1"), "event": "call-paused"}, "event"),
        ({k: v for k, v in started_body("c1").items() if k != "event"}, "event"),
    ],
    ids=[
        "wrong-type",
        "missing-required",
        "extra-field",
        "not-a-timestamp",
        "naive-timestamp",
        "non-utc-timestamp",
        "null-required",
        "missing-nullable",
        "rate-without-channels",
        "string-rate",
        "bad-turn",
        "unknown-event",
        "no-event",
    ],
)
def test_schema_errors_are_422_naming_the_field_and_store_nothing(
    roark: LocalRoark, api: httpx.Client, body: dict[str, Any], field: str
) -> None:
    resp = api.post(WEBHOOK, json=body)
    assert resp.status_code == 422, resp.text
    payload = resp.json()
    assert field in payload["error"]
    assert any(field in d["field"] for d in payload["details"])
    assert roark.calls() == []
    assert roark.call("c1") is None


@pytest.mark.parametrize(
    "body",
    [
        {"pipecatCallId": "c1", "chunkIndex": -1, "contentType": "audio/pcm"},
        {"pipecatCallId": "c1", "chunkIndex": "0", "contentType": "audio/pcm"},
        {"pipecatCallId": "c1", "chunkIndex": 0, "contentType": "audio/wav"},
        {"pipecatCallId": "c1", "chunkIndex": 0},
        {"pipecatCallId": "", "chunkIndex": 0, "contentType": "audio/pcm"},
    ],
)
def test_presign_validates_strictly(
    roark: LocalRoark, api: httpx.Client, body: dict[str, Any]
) -> None:
    assert api.post(PRESIGN, json=body).status_code == 422
    assert roark.calls() == []


def test_oversized_body_is_413_and_stores_nothing(tmp_path: Path) -> None:
    with (
        LocalRoark(tmp_path, max_body_bytes=1024) as roark,
        httpx.Client(base_url=roark.base_url, headers=auth_headers(roark.api_key)) as api,
    ):
        body = started_body("c1", agentPrompt="x" * 2048)
        resp = api.post(WEBHOOK, json=body)
        assert resp.status_code == 413
        assert roark.calls() == []
        # The connection stays usable: the refused body was drained, not left on the wire.
        assert api.post(WEBHOOK, json=started_body("c1")).status_code == 200


# -- presigned uploads --------------------------------------------------------------------


def test_presign_reply_and_put_happy_path(
    roark: LocalRoark, api: httpx.Client, s3: httpx.Client
) -> None:
    api.post(WEBHOOK, json=started_body("c1"))
    resp = api.post(
        PRESIGN, json={"pipecatCallId": "c1", "chunkIndex": 3, "contentType": "audio/pcm"}
    )
    data = resp.json()["data"]
    assert data["chunkIndex"] == 3
    assert data["method"] == "PUT"
    assert data["contentType"] == "audio/pcm"
    assert data["expiresInSeconds"] == 300
    assert data["uploadUrl"].startswith(roark.base_url + "/_s3/")
    assert data["s3Key"].endswith("000003.pcm")
    put = s3.put(data["uploadUrl"], content=b"\x01\x00" * 50, headers=PCM)
    assert put.status_code == 200
    assert put.headers["etag"]
    call = roark.call("c1")
    assert call is not None
    assert call["chunks"] == {3: 100}
    assert call["missing_chunks"] == [0, 1, 2]
    assert [r["endpoint"] for r in roark.requests("c1")] == ["webhook", "presign", "upload"]


@pytest.mark.parametrize(
    "headers", [{"authorization": "Bearer rk_test_local"}, {"x-roark-api-key": "rk_test_local"}]
)
def test_put_with_an_api_key_header_is_400_and_does_not_burn_the_url(
    roark: LocalRoark, api: httpx.Client, s3: httpx.Client, headers: dict[str, str]
) -> None:
    url = presign(api, "c1", 0)
    resp = s3.put(url, content=b"ab", headers={**PCM, **headers})
    assert resp.status_code == 400
    assert "InvalidArgument" in resp.text
    assert roark.call("c1") is None
    assert s3.put(url, content=b"ab", headers=PCM).status_code == 200


def test_put_needs_audio_pcm_content_type(
    roark: LocalRoark, api: httpx.Client, s3: httpx.Client
) -> None:
    url = presign(api, "c1", 0)
    resp = s3.put(url, content=b"ab", headers={"content-type": "application/octet-stream"})
    assert resp.status_code == 403
    assert roark.call("c1") is None


def test_url_is_one_shot(roark: LocalRoark, api: httpx.Client, s3: httpx.Client) -> None:
    url = presign(api, "c1", 0)
    assert s3.put(url, content=b"ab", headers=PCM).status_code == 200
    again = s3.put(url, content=b"cd", headers=PCM)
    assert again.status_code == 403
    call = roark.call("c1")
    assert call is not None
    assert call["chunks"] == {0: 2}
    assert roark.requests("c1")[-1]["status"] == 403


def test_expired_url_is_rejected(tmp_path: Path) -> None:
    clock = FakeClock()
    with (
        LocalRoark(tmp_path, url_ttl_s=5.0, clock=clock) as roark,
        httpx.Client(base_url=roark.base_url, headers=auth_headers(roark.api_key)) as api,
        httpx.Client() as s3,
    ):
        url = presign(api, "c1", 0)
        clock.now += 5.0
        resp = s3.put(url, content=b"ab", headers=PCM)
        assert resp.status_code == 403
        assert "Request has expired" in resp.text
        assert roark.call("c1") is None
        fresh = presign(api, "c1", 0)
        clock.now += 4.9
        assert s3.put(fresh, content=b"ab", headers=PCM).status_code == 200


@pytest.mark.parametrize(
    "tamper",
    [
        {"X-Roark-Signature": "0" * 64},
        {"X-Roark-Chunk": "1"},
        {"X-Roark-Call": "someone-else"},
        {"X-Roark-Expires": "99999999999999"},
    ],
    ids=["signature", "chunk", "call", "expiry"],
)
def test_tampered_url_is_rejected(
    roark: LocalRoark, api: httpx.Client, s3: httpx.Client, tamper: dict[str, str]
) -> None:
    url = _with_query(presign(api, "c1", 0), **tamper)
    resp = s3.put(url, content=b"ab", headers=PCM)
    assert resp.status_code == 403
    assert "SignatureDoesNotMatch" in resp.text
    assert roark.calls() == []


def test_oversized_chunk_is_413(tmp_path: Path) -> None:
    with (
        LocalRoark(tmp_path, max_chunk_bytes=100) as roark,
        httpx.Client(base_url=roark.base_url, headers=auth_headers(roark.api_key)) as api,
        httpx.Client() as s3,
    ):
        url = presign(api, "c1", 0)
        assert s3.put(url, content=b"x" * 101, headers=PCM).status_code == 413
        assert roark.call("c1") is None
        assert s3.put(url, content=b"x" * 100, headers=PCM).status_code == 200


def test_same_chunk_twice_identical_is_counted_and_differing_replaces(
    roark: LocalRoark, api: httpx.Client, s3: httpx.Client
) -> None:
    _upload(api, s3, "c1", 0, b"\x01\x00\x02\x00")
    _upload(api, s3, "c1", 0, b"\x01\x00\x02\x00")
    _upload(api, s3, "c1", 1, b"\x03\x00")
    _upload(api, s3, "c1", 1, b"\x04\x00\x05\x00")
    api.post(WEBHOOK, json=ended_body("c1", recordingSampleRate=8000, recordingNumChannels=1))
    call = roark.call("c1")
    assert call is not None
    assert call["duplicates"]["chunks"] == {0: 1}
    assert call["duplicates"]["chunks_replaced"] == {1: 1}
    wav = roark.wav_bytes("c1")
    assert wav is not None
    assert _wav_frames(wav)[0] == b"\x01\x00\x02\x00\x04\x00\x05\x00"


# -- webhooks, idempotency, assembly ------------------------------------------------------


def test_duplicate_webhooks_are_idempotent(roark: LocalRoark, api: httpx.Client) -> None:
    for body in (
        started_body("c1"),
        started_body("c1", agentName="changed"),
        ended_body("c1"),
        ended_body("c1"),
    ):
        resp = api.post(WEBHOOK, json=body)
        assert resp.status_code == 200
    call = roark.call("c1")
    assert call is not None
    assert call["duplicates"]["call-started"] == 1
    assert call["duplicates"]["call-ended"] == 1
    assert call["started"] == started_body("c1")
    assert call["ended"] == ended_body("c1")
    assert call["status"] == "ended"
    assert [r["event"] for r in roark.requests("c1")] == ["call-started"] * 2 + ["call-ended"] * 2
    assert len(roark.calls()) == 1


def test_wav_is_the_chunks_in_index_order_byte_exact(
    roark: LocalRoark, api: httpx.Client, s3: httpx.Client
) -> None:
    call_id = "room/42 <é>?#"
    rng = random.Random(7)
    chunks = [rng.randbytes(4 * 1000 + 4 * i) for i in range(3)]
    api.post(WEBHOOK, json=started_body(call_id))
    for index in (2, 0, 1):
        _upload(api, s3, call_id, index, chunks[index])
    resp = api.post(
        WEBHOOK, json=ended_body(call_id, recordingSampleRate=24000, recordingNumChannels=2)
    )
    assert resp.status_code == 200
    call = roark.wait_for_call_ended(call_id, timeout=1.0)
    assert call["missing_chunks"] == []
    assert call["wav_path"] is not None
    assert Path(call["wav_path"]).parent == roark.data_dir / "recordings"
    assert "<" not in Path(call["wav_path"]).name
    wav = roark.wav_bytes(call_id)
    assert wav is not None
    frames, rate, channels, width = _wav_frames(wav)
    assert frames == b"".join(chunks)
    assert (rate, channels, width) == (24000, 2, 2)
    served = api.get(f"/api/calls/{quote(call_id, safe='')}/recording.wav")
    assert served.status_code == 200
    assert served.headers["content-type"] == "audio/wav"
    assert served.content == wav


def test_gaps_are_flagged_and_a_late_chunk_reassembles(
    roark: LocalRoark, api: httpx.Client, s3: httpx.Client
) -> None:
    api.post(WEBHOOK, json=started_body("c1"))
    _upload(api, s3, "c1", 0, b"\x00\x01")
    _upload(api, s3, "c1", 2, b"\x00\x03")
    api.post(WEBHOOK, json=ended_body("c1", recordingSampleRate=16000, recordingNumChannels=1))
    call = roark.call("c1")
    assert call is not None
    assert call["missing_chunks"] == [1]
    assert "missing_chunks" in call["flags"]
    _upload(api, s3, "c1", 1, b"\x00\x02")
    call = roark.call("c1")
    assert call is not None
    assert call["missing_chunks"] == []
    assert call["late_chunks"] == [1]
    wav = roark.wav_bytes("c1")
    assert wav is not None
    assert _wav_frames(wav)[0] == b"\x00\x01\x00\x02\x00\x03"


def test_no_recording_fields_means_no_wav(
    roark: LocalRoark, api: httpx.Client, s3: httpx.Client
) -> None:
    _upload(api, s3, "c1", 0, b"\x00\x01")
    api.post(WEBHOOK, json=ended_body("c1"))
    call = roark.call("c1")
    assert call is not None
    assert call["wav_path"] is None
    assert roark.wav_bytes("c1") is None
    assert api.get("/api/calls/c1/recording.wav").status_code == 404


def test_call_ended_before_started_is_kept_and_flagged(
    roark: LocalRoark, api: httpx.Client
) -> None:
    assert api.post(WEBHOOK, json=ended_body("c1")).status_code == 200
    assert api.post(WEBHOOK, json=started_body("c1")).status_code == 200
    call = roark.call("c1")
    assert call is not None
    assert call["out_of_order"] is True
    assert call["started"] is not None
    assert call["ended"] is not None


def test_state_persists_across_restart(tmp_path: Path) -> None:
    pcm = b"\x10\x00\x20\x00"
    with (
        LocalRoark(tmp_path) as first,
        httpx.Client(base_url=first.base_url, headers=auth_headers(first.api_key)) as api,
        httpx.Client() as s3,
    ):
        api.post(WEBHOOK, json=started_body("c1"))
        _upload(api, s3, "c1", 0, pcm)
        api.post(WEBHOOK, json=ended_body("c1", recordingSampleRate=8000, recordingNumChannels=1))
        before = first.call("c1")
    with (
        LocalRoark(tmp_path) as second,
        httpx.Client(base_url=second.base_url, headers=auth_headers(second.api_key)) as api,
    ):
        assert second.call("c1") == before
        wav = second.wav_bytes("c1")
        assert wav is not None
        assert _wav_frames(wav)[0] == pcm
        assert len(second.requests("c1")) == 4
        assert api.post(WEBHOOK, json=ended_body("c1")).status_code == 200
        call = second.call("c1")
        assert call is not None
        assert call["duplicates"]["call-ended"] == 1


def test_wait_for_call_ended_times_out_helpfully(roark: LocalRoark, api: httpx.Client) -> None:
    api.post(WEBHOOK, json=started_body("c1"))
    with pytest.raises(TimeoutError, match=r"'c1'.*status=started.*call-started->200"):
        roark.wait_for_call_ended("c1", timeout=0.05)
    with pytest.raises(TimeoutError, match="nothing received"):
        roark.wait_for_call_ended("nope", timeout=0.01)


# -- faults -------------------------------------------------------------------------------


def test_fail_next_with_retry_after(roark: LocalRoark, api: httpx.Client) -> None:
    roark.faults.fail_next(2, 429, retry_after=3)
    first = api.post(WEBHOOK, json=started_body("c1"))
    second = api.post(WEBHOOK, json=started_body("c1"))
    third = api.post(WEBHOOK, json=started_body("c1"))
    assert [first.status_code, second.status_code, third.status_code] == [429, 429, 200]
    assert first.headers["retry-after"] == "3"
    assert [r["fault"] for r in roark.requests("c1")] == ["status", "status", None]
    call = roark.call("c1")
    assert call is not None
    assert call["duplicates"]["call-started"] == 0


def test_retry_after_as_http_date(roark: LocalRoark, api: httpx.Client) -> None:
    roark.faults.fail_next(1, 503, retry_after=30, retry_after_as_date=True)
    resp = api.post(WEBHOOK, json=started_body("c1"))
    assert resp.status_code == 503
    assert resp.headers["retry-after"].endswith(" GMT")


def test_fail_next_for_one_endpoint_only(
    roark: LocalRoark, api: httpx.Client, s3: httpx.Client
) -> None:
    roark.faults.fail_next(1, 502, endpoint="upload")
    assert api.post(WEBHOOK, json=started_body("c1")).status_code == 200
    url = presign(api, "c1", 0)
    assert s3.put(url, content=b"ab", headers=PCM).status_code == 502
    # The fault fired before the URL was checked, so the URL is still unused.
    assert s3.put(url, content=b"ab", headers=PCM).status_code == 200


@pytest.mark.parametrize("status", [500, 503, 401, 400])
def test_fail_next_statuses(roark: LocalRoark, api: httpx.Client, status: int) -> None:
    roark.faults.fail_next(1, status, endpoint="webhook")
    assert api.post(WEBHOOK, json=started_body("c1")).status_code == status
    assert roark.call("c1") is None


def test_fail_fraction_is_seeded(roark: LocalRoark, api: httpx.Client) -> None:
    roark.faults.fail_fraction(0.5, 503, seed=11)
    statuses = [api.post(WEBHOOK, json=started_body("c1")).status_code for _ in range(20)]
    rng = random.Random(11)
    expected = [503 if rng.random() < 0.5 else 200 for _ in range(20)]
    assert statuses == expected
    assert 0 < statuses.count(503) < 20


def test_drop_next_closes_without_response(roark: LocalRoark, api: httpx.Client) -> None:
    roark.faults.drop_next(1, endpoint="webhook")
    with pytest.raises(httpx.RemoteProtocolError):
        api.post(WEBHOOK, json=started_body("c1"))
    assert api.post(WEBHOOK, json=started_body("c1")).status_code == 200
    statuses = [(r["status"], r["fault"]) for r in roark.requests("c1")]
    assert statuses == [(None, "drop"), (200, None)]


def test_drop_fraction(roark: LocalRoark, api: httpx.Client) -> None:
    roark.faults.drop_fraction(1.0, endpoint="presign")
    body = {"pipecatCallId": "c1", "chunkIndex": 0, "contentType": "audio/pcm"}
    with pytest.raises(httpx.RemoteProtocolError):
        api.post(PRESIGN, json=body)
    assert api.post(WEBHOOK, json=started_body("c1")).status_code == 200


def test_latency(roark: LocalRoark, api: httpx.Client) -> None:
    roark.faults.set_latency(0.25, endpoint="webhook")
    start = time.monotonic()
    assert api.post(WEBHOOK, json=started_body("c1")).status_code == 200
    assert time.monotonic() - start >= 0.25
    start = time.monotonic()
    api.post(PRESIGN, json={"pipecatCallId": "c1", "chunkIndex": 0, "contentType": "audio/pcm"})
    assert time.monotonic() - start < 0.25


def test_presign_without_upload_url(roark: LocalRoark, api: httpx.Client) -> None:
    roark.faults.presign_without_upload_url(1)
    body = {"pipecatCallId": "c1", "chunkIndex": 0, "contentType": "audio/pcm"}
    first = api.post(PRESIGN, json=body).json()["data"]
    assert "uploadUrl" not in first
    assert first["chunkIndex"] == 0
    assert "uploadUrl" in api.post(PRESIGN, json=body).json()["data"]


def test_expire_urls_fault(roark: LocalRoark, api: httpx.Client, s3: httpx.Client) -> None:
    roark.faults.expire_urls()
    resp = api.post(
        PRESIGN, json={"pipecatCallId": "c1", "chunkIndex": 0, "contentType": "audio/pcm"}
    )
    data = resp.json()["data"]
    assert data["expiresInSeconds"] == 0
    put = s3.put(data["uploadUrl"], content=b"ab", headers=PCM)
    assert put.status_code == 403
    assert "Request has expired" in put.text


def test_down_drops_everything_until_cleared(roark: LocalRoark, api: httpx.Client) -> None:
    roark.faults.set_down()
    for path in (WEBHOOK, "/api/calls"):
        with pytest.raises(httpx.RemoteProtocolError):
            api.post(path, json=started_body("c1")) if path == WEBHOOK else api.get(path)
    assert api.get("/_dev/faults").json()["data"]["down"] is True
    roark.faults.clear()
    assert api.post(WEBHOOK, json=started_body("c1")).status_code == 200


def test_faults_over_http(roark: LocalRoark, api: httpx.Client) -> None:
    with httpx.Client(base_url=roark.base_url, headers=auth_headers(roark.api_key)) as dev:
        spec = {"fail_next": {"n": 1, "status": 429, "retry_after": 1, "endpoint": "webhook"}}
        resp = dev.post("/_dev/faults", json=spec)
        assert resp.status_code == 200
        assert resp.json()["data"]["rules"][0]["status"] == 429
        failed = api.post(WEBHOOK, json=started_body("c1"))
        assert (failed.status_code, failed.headers["retry-after"]) == (429, "1")
        dev.post("/_dev/faults", json={"down": True})
        with pytest.raises(httpx.RemoteProtocolError):
            api.post(WEBHOOK, json=started_body("c1"))
        assert dev.delete("/_dev/faults").status_code == 200
        assert api.post(WEBHOOK, json=started_body("c1")).status_code == 200
        bad = dev.post("/_dev/faults", json={"fail_next": {"status": "soon"}, "nope": 1})
        assert bad.status_code == 422
        assert roark.faults.snapshot()["rules"] == []


def test_faults_reject_bad_settings() -> None:
    faults = Faults()
    with pytest.raises(ValueError, match="endpoint"):
        faults.fail_next(1, 503, endpoint=cast(Any, "nope"))
    with pytest.raises(ValueError, match="4xx/5xx"):
        faults.fail_next(1, 200)
    with pytest.raises(ValueError, match="p must"):
        faults.drop_fraction(1.5)


# -- read-back and pages ------------------------------------------------------------------


def test_read_back_api(roark: LocalRoark, api: httpx.Client) -> None:
    call_id = "a/b c"
    api.post(WEBHOOK, json=started_body(call_id, agentName="Ava"))
    with httpx.Client(base_url=roark.base_url) as anon:
        listed = anon.get("/api/calls").json()["data"]
        assert [(c["pipecatCallId"], c["agentName"], c["status"]) for c in listed] == [
            (call_id, "Ava", "started")
        ]
        one = anon.get(f"/api/calls/{quote(call_id, safe='')}").json()["data"]
        assert one["started"] == started_body(call_id, agentName="Ava")
        reqs = anon.get("/api/requests", params={"callId": call_id}).json()["data"]
        assert [(r["method"], r["status"], r["event"]) for r in reqs] == [
            ("POST", 200, "call-started")
        ]
        assert anon.get("/api/calls/missing").status_code == 404


def test_call_page_renders_escaped_transcript_tools_audio_and_trace(
    roark: LocalRoark, api: httpx.Client, s3: httpx.Client
) -> None:
    call_id = "call <1>"
    api.post(WEBHOOK, json=started_body(call_id))
    _upload(api, s3, call_id, 0, b"\x00\x00" * 8)
    turns = [
        {
            "role": "user",
            "content": "<script>alert('x')</script> book a table",
            "timestamp": "2025-01-01T10:00:01.000Z",
            "endTimestamp": "2025-01-01T10:00:02.000Z",
            "audioOffsetMs": 1000,
            "endAudioOffsetMs": 2000,
        },
        {
            "role": "assistant",
            "content": "Sure & done",
            "timestamp": "2025-01-01T10:00:02.640Z",
            "endTimestamp": "2025-01-01T10:00:04.000Z",
        },
    ]
    tools = [
        {
            "kind": "tool_call",
            "toolCallId": "t1",
            "name": "book",
            "arguments": '{"when":"<7pm>"}',
            "timestamp": T0,
        },
        {"kind": "tool_result", "toolCallId": "t1", "content": "booked", "timestamp": T0},
    ]
    body = ended_body(
        call_id,
        recordingSampleRate=16000,
        recordingNumChannels=1,
        transcript=turns,
        toolCalls=tools,
    )
    assert api.post(WEBHOOK, json=body).status_code == 200
    with httpx.Client(base_url=roark.base_url) as anon:
        trace = api.post(
            f"/_dev/calls/{quote(call_id, safe='')}/trace",
            json={"traceId": "0af7651916cd43dd8448eb211c80319c"},
        )
        assert trace.status_code == 200
        page = anon.get(f"/calls/{quote(call_id, safe='')}")
        index = anon.get("/")
    assert page.status_code == 200
    html = page.text
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; book a table" in html
    assert "Sure &amp; done" in html
    assert "call &lt;1&gt;" in html
    assert "640 ms" in html
    assert "1000–2000 ms" in html
    assert "&lt;7pm&gt;" in html and "booked" in html
    assert (
        '<audio id="player" controls preload="none" src="/api/calls/call%20%3C1%3E/recording.wav">'
    ) in html
    assert 'href="http://localhost:16686/trace/0af7651916cd43dd8448eb211c80319c"' in html
    assert "View trace in Jaeger" in html
    assert index.status_code == 200
    assert "call &lt;1&gt;" in index.text


def test_trace_link_rejects_non_http_urls(roark: LocalRoark, api: httpx.Client) -> None:
    resp = api.post("/_dev/calls/c1/trace", json={"traceId": "t", "jaegerUrl": "javascript:x"})
    assert resp.status_code == 422


# -- lifecycle and CLI --------------------------------------------------------------------


def test_start_is_idempotent_and_stop_releases_the_port(tmp_path: Path) -> None:
    roark = LocalRoark(tmp_path)
    with pytest.raises(RuntimeError):
        _ = roark.base_url
    roark.start()
    url = roark.base_url
    roark.start()
    assert roark.base_url == url
    roark.stop()
    roark.stop()
    with httpx.Client() as client, pytest.raises(httpx.ConnectError):
        client.get(url + "/api/calls")


def test_cli_prints_url_and_exits_on_sigterm(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "pipecat_roark_otel.devserver", "--port", "0"]
    cmd += ["--data-dir", str(tmp_path), "--api-key", "rk_test_cli"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.split()[line.split().index("on") + 1]
        with httpx.Client(base_url=url, headers=auth_headers("rk_test_cli")) as api:
            assert api.post(WEBHOOK, json=started_body("c1")).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
