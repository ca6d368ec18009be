"""Issue 15, the bridge: what a hostile peer or a full disk does is answered cleanly, bounded.

Each test is one finding of the issue, reproduced on loopback against a real bridge.
"""

from __future__ import annotations

import gzip
import resource
import shutil
import socket
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from pipecat_roark_otel import _errors
from pipecat_roark_otel import semconv as sc
from pipecat_roark_otel.bridge import BridgeConfig, RoarkBridge, TLSFiles
from pipecat_roark_otel.bridge._auth import BearerAuth, check_exposure
from pipecat_roark_otel.config import resolve_settings
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter._delivery import DeliveryOptions
from pipecat_roark_otel.exporter._engine import engine_for
from pipecat_roark_otel.exporter._outbox import call_key

from . import otlp_build as ob
from .conftest import TOKEN, BridgeFactory
from .support import wait_until

PB = "application/x-protobuf"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": PB}
HUGE = 2**62


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _post(bridge: RoarkBridge, path: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{bridge.http_endpoint}{path}", content=body, headers={**AUTH, **headers})


def _raw(bridge: RoarkBridge, request: bytes, timeout: float = 10.0) -> int:
    """One raw HTTP exchange, for what httpx would never send; the status code."""
    assert bridge.http_port is not None
    with socket.create_connection(("127.0.0.1", bridge.http_port), timeout=timeout) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
            if b"\r\n\r\n" in out:
                break
        return int(out.split(b" ", 2)[1])


def _head(path: str, *lines: str) -> bytes:
    text = f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
    text += f"Content-Type: {PB}\r\nConnection: close\r\n"
    return (text + "".join(f"{line}\r\n" for line in lines) + "\r\n").encode()


def _spool_keys(bridge: RoarkBridge) -> set[str]:
    return set(bridge.ingest.engine.outbox.pending_keys())


@pytest.mark.parametrize(
    "attribute", [sc.CALL_SEGMENT_COUNT, sc.RECORDING_CHUNKS, sc.RECORDING_SAMPLE_RATE]
)
def test_a_huge_count_is_a_counted_rejection_not_an_allocation(
    attribute: str, make_bridge: BridgeFactory
) -> None:
    bridge = make_bridge()
    call_id = f"huge-{uuid.uuid4()}"
    before = _rss_mib()
    body = ob.traces(ob.call_end(call_id, **{attribute: HUGE})).SerializeToString()
    assert len(body) < 512  # a few hundred bytes, as in the issue
    answer = _post(bridge, "/v1/traces", body)
    assert answer.status_code == 200
    partial = ExportTraceServiceResponse.FromString(answer.content).partial_success
    assert partial.rejected_spans == 1
    assert attribute in partial.error_message
    assert _errors.dropped["bridge_rejected"] == 1
    assert call_key(call_id) not in _spool_keys(bridge)  # nothing poisoned to restart into
    assert _rss_mib() - before < 100


def test_a_huge_segment_index_never_reaches_the_orphan_path(
    roark: LocalRoark, make_bridge: BridgeFactory
) -> None:
    """The bot dies mid-call after a poisoned segment: ended "orphaned" once, from what is sane."""
    bridge = make_bridge(options=DeliveryOptions(orphan_timeout=1.0, rescan_interval=0.2))
    call_id = f"orphan-{uuid.uuid4()}"
    seg = {sc.CONVERSATION_ID: call_id}
    request = ob.traces(
        ob.started(call_id),
        ob.span(sc.SPAN_CALL_SEGMENT, {**seg, sc.SEGMENT_INDEX: HUGE}),
        ob.span(sc.SPAN_CALL_SEGMENT, {**seg, sc.SEGMENT_INDEX: 0}),
    )
    answer = _post(bridge, "/v1/traces", request.SerializeToString())
    assert ExportTraceServiceResponse.FromString(answer.content).partial_success.rejected_spans == 1
    call = roark.wait_for_call_ended(call_id, timeout=20)
    assert call["ended"]["callEndedReason"] == "orphaned"
    wait_until(lambda: not _spool_keys(bridge), what="the orphaned call to complete")
    ends = [r for r in roark.requests(call_id) if r.get("event") == "call-ended"]
    assert len(ends) == 1


def test_a_decompression_bomb_is_refused_at_the_decompressed_cap(
    make_bridge: BridgeFactory,
) -> None:
    bridge = make_bridge(max_body_bytes=4 * 1024 * 1024)
    bomb = gzip.compress(b"\0" * (256 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 400 * 1024
    before = _rss_mib()
    answer = _post(bridge, "/v1/traces", bomb, **{"Content-Encoding": "gzip"})
    assert answer.status_code == 413
    assert "decompressed" in answer.text
    assert _rss_mib() - before < 100
    # A compressed body within the cap still works.
    fine = gzip.compress(ob.traces(ob.started(f"gz-{uuid.uuid4()}")).SerializeToString())
    assert _post(bridge, "/v1/traces", fine, **{"Content-Encoding": "gzip"}).status_code == 200


@pytest.mark.parametrize("length", ["-1", "abc", "1e3", ""])
def test_a_bad_content_length_is_400(length: str, make_bridge: BridgeFactory) -> None:
    bridge = make_bridge()
    assert _raw(bridge, _head("/v1/traces", f"Content-Length: {length}") + b"x" * 64) == 400


def test_a_missing_content_length_is_411(make_bridge: BridgeFactory) -> None:
    bridge = make_bridge()
    assert _raw(bridge, _head("/v1/traces")) == 411


def test_a_body_over_the_limit_is_refused_before_it_is_read(make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(max_body_bytes=1024 * 1024)
    assert _raw(bridge, _head("/v1/traces", f"Content-Length: {300 * 1024 * 1024}")) == 413


def test_a_chunked_body_is_read_and_stored(make_bridge: BridgeFactory) -> None:
    bridge = make_bridge()
    call_id = f"chunked-{uuid.uuid4()}"
    body = ob.traces(ob.started(call_id)).SerializeToString()
    half = len(body) // 2
    parts = [body[:half], body[half:]]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    assert _raw(bridge, _head("/v1/traces", "Transfer-Encoding: chunked") + chunked) == 200
    assert bridge.ingest.stats()["spans"] == 1


def test_an_endless_chunked_body_stops_at_the_cap(make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(max_body_bytes=256 * 1024)
    piece = b"a" * 65536
    chunked = b"%x\r\n%s\r\n" % (len(piece), piece) * 8
    assert _raw(bridge, _head("/v1/traces", "Transfer-Encoding: chunked") + chunked) == 413


def test_a_stalled_body_times_out(make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(read_timeout=0.5)
    assert _raw(bridge, _head("/v1/traces", "Content-Length: 1000") + b"x" * 10) == 408


def test_unauthenticated_requests_store_nothing(make_bridge: BridgeFactory) -> None:
    bridge = make_bridge()
    call_id = f"intruder-{uuid.uuid4()}"
    body = ob.traces(ob.started(call_id)).SerializeToString()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        answer = httpx.post(
            f"{bridge.http_endpoint}/v1/traces",
            content=body,
            headers={"Content-Type": PB, **headers},
        )
        assert answer.status_code == 401
    with grpc.insecure_channel(bridge.grpc_endpoint) as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Export(ExportTraceServiceRequest.FromString(body), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = stub.Export(
            ExportTraceServiceRequest.FromString(body),
            metadata=[("authorization", f"Bearer {TOKEN}")],
            timeout=10,
        )
        assert answer.partial_success.rejected_spans == 0
    assert bridge.ingest.stats()["spans"] == 1


def test_no_token_means_loopback_only(roark: LocalRoark, tmp_path: Path) -> None:
    settings = resolve_settings(api_key=roark.api_key, base_url=roark.base_url, spool_dir=tmp_path)
    engine = engine_for(settings)
    try:
        with pytest.raises(ValueError, match="ROARK_BRIDGE_TOKEN"):
            RoarkBridge(engine, BridgeConfig(host="0.0.0.0"))
        assert repr(BridgeConfig(token="s3cret")).count("s3cret") == 0
    finally:
        engine.shutdown(1.0)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a spool that fills up, and can be made read-only."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_or_read_only_spool_is_503_and_delivered_once_space_returns(
    small_disk: Path, roark: LocalRoark, make_bridge: BridgeFactory
) -> None:
    bridge = make_bridge(spool=small_disk / "spool")
    call_id = f"disk-{uuid.uuid4()}"
    request = ob.logs(
        *(ob.chunk_record(call_id, i, bytes([i]) * 400_000) for i in range(3))
    ).SerializeToString()
    traces = ob.traces(ob.started(call_id), ob.call_end(call_id)).SerializeToString()
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 1_500_000)

    answer = _post(bridge, "/v1/logs", request)
    assert answer.status_code == 503
    assert answer.headers["Retry-After"]
    assert _errors.dropped["bridge_outbox_unavailable"] >= 1

    filler.unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    assert _post(bridge, "/v1/traces", traces).status_code == 503

    # Space returns; the Collector's queue sends the same requests again.
    subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    end = ob.traces(
        ob.started(call_id),
        ob.call_end(
            call_id,
            **{sc.RECORDING_CHUNKS: 3, sc.RECORDING_SAMPLE_RATE: 16000, sc.RECORDING_CHANNELS: 2},
        ),
    )
    assert _post(bridge, "/v1/logs", request).status_code == 200
    assert _post(bridge, "/v1/traces", end.SerializeToString()).status_code == 200
    call = roark.wait_for_call_ended(call_id, timeout=20)
    assert call["ended"]["recordingSampleRate"] == 16000
    wav = roark.wav_bytes(call_id)
    assert wav is not None and wav[44:] == b"".join(bytes([i]) * 400_000 for i in range(3))


def _pki(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, extra in (("server", ["-extfile", "san.cnf"]), ("client", [])):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", *extra)  # fmt: skip
    return {n: d / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def test_mtls_admits_only_client_certificates_of_its_ca(
    make_bridge: BridgeFactory, tmp_path: Path
) -> None:
    pki = _pki(tmp_path)
    tls = TLSFiles(pki["server.pem"], pki["server.key"], pki["ca.pem"])
    bridge = make_bridge(tls=tls, token=None)
    body = ob.traces(ob.started(f"mtls-{uuid.uuid4()}")).SerializeToString()
    url = f"{bridge.http_endpoint}/v1/traces"
    assert url.startswith("https://")
    headers = {"Content-Type": PB}
    with_cert = ssl.create_default_context(cafile=pki["ca.pem"])
    with_cert.load_cert_chain(pki["client.pem"], pki["client.key"])
    with httpx.Client(verify=with_cert) as ok:
        assert ok.post(url, content=body, headers=headers).status_code == 200
    with (
        httpx.Client(verify=ssl.create_default_context(cafile=pki["ca.pem"])) as anonymous,
        pytest.raises(httpx.HTTPError),
    ):
        anonymous.post(url, content=body, headers=headers)

    root = pki["ca.pem"].read_bytes()
    client = grpc.ssl_channel_credentials(
        root, pki["client.key"].read_bytes(), pki["client.pem"].read_bytes()
    )
    request = ExportTraceServiceRequest.FromString(body)
    with grpc.secure_channel(bridge.grpc_endpoint, client) as channel:
        trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, timeout=10)
    anonymous_grpc = grpc.ssl_channel_credentials(root)
    with (
        grpc.secure_channel(bridge.grpc_endpoint, anonymous_grpc) as channel,
        pytest.raises(grpc.RpcError),
    ):
        trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, timeout=10)
    assert bridge.ingest.stats()["spans"] == 2  # one over each protocol; nothing else


def test_mtls_may_listen_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    tls = TLSFiles(tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem")
    check_exposure("0.0.0.0", BearerAuth(None), tls)
    with pytest.raises(ValueError, match="tls-client-ca"):
        check_exposure("0.0.0.0", BearerAuth(None), TLSFiles(tls.cert_file, tls.key_file))
