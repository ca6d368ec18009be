"""The delivery client's own HTTP/1.1 transport, against real sockets on 127.0.0.1.

Keep-alive, a connection the server closed while idle, timeouts, refused connections,
proxies from the environment (httpx's transports still take those) and verified TLS.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipecat_roark_otel.config import RoarkSettings
from pipecat_roark_otel.exporter._client import RoarkClient, RoarkHTTPError

from .support import wait_until

KEY = "rk_test_transport"
_PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


OK = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}'


class TinyServer:
    """Reads whole HTTP/1.1 requests; ``mode``: "keep" (answer, keep the connection),
    "drop" (answer, then close without saying so), "silent" (never answer).

    ``script`` overrides the mode for the first requests, in order: each entry is the
    raw bytes to answer with, then whether to close the connection."""

    def __init__(
        self,
        mode: str = "keep",
        tls: ssl.SSLContext | None = None,
        script: list[tuple[bytes, bool]] | None = None,
    ) -> None:
        self.mode = mode
        self.script = list(script or [])
        self._tls = tls
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.connections = 0
        self.closed = 0
        self.requests: list[bytes] = []  # request lines
        self.bodies: list[bytes] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            buf = b""
            while not self._stop.is_set():
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    buf += conn.recv(65536)
                body, buf = buf[:length], buf[length:]
                with self._lock:
                    self.requests.append(lines[0])
                    self.bodies.append(body)
                    step = self.script.pop(0) if self.script else None
                if step is not None:
                    conn.sendall(step[0])
                    if step[1]:
                        return
                    continue
                if self.mode == "silent":
                    self._stop.wait(30)
                    return
                conn.sendall(OK)
                if self.mode == "drop":
                    return
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()
            with self._lock:
                self.closed += 1


@pytest.fixture
def servers() -> Iterator[list[TinyServer]]:
    made: list[TinyServer] = []
    yield made
    for s in made:
        s.close()


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def client(base_url: str, tmp_path: Path, timeout: float = 5.0) -> RoarkClient:
    settings = RoarkSettings(api_key=KEY, base_url=base_url, spool_dir=tmp_path / "spool")
    return RoarkClient(settings, timeout=timeout)


def event(n: int) -> dict[str, object]:
    return {"event": "call-started", "pipecatCallId": f"call-{n}"}


def serve(
    servers: list[TinyServer], tmp_path: Path, *args: Any, **kwargs: Any
) -> tuple[TinyServer, RoarkClient]:
    server = TinyServer(*args, **kwargs)
    servers.append(server)
    return server, client(server.url, tmp_path)


def failure(c: RoarkClient, n: int = 1) -> tuple[int | None, str]:
    """The status and message of the error that posting event ``n`` raises."""
    with pytest.raises(RoarkHTTPError) as err:
        c.post_event(event(n))
    return err.value.status, err.value.message


def test_requests_share_one_kept_alive_connection(
    tmp_path: Path, servers: list[TinyServer]
) -> None:
    server, c = serve(servers, tmp_path)
    for n in range(20):
        assert c.post_event(event(n)).status == 200
    c.close()
    assert server.connections == 1
    assert len(server.requests) == 20
    assert server.requests[0] == b"POST /v1/integrations/pipecat HTTP/1.1"
    assert server.bodies[3] == b'{"event":"call-started","pipecatCallId":"call-3"}'


def test_a_connection_the_server_closed_while_idle_is_not_reused(
    tmp_path: Path, servers: list[TinyServer]
) -> None:
    server, c = serve(servers, tmp_path, "drop")
    for n in range(5):
        assert c.post_event(event(n)).status == 200
        wait_until(lambda n=n: server.closed == n + 1, what="the server closed the connection")
    c.close()
    assert len(server.requests) == 5  # each sent exactly once
    assert server.connections == 5


def test_a_silent_server_times_out_as_a_network_error(
    tmp_path: Path, servers: list[TinyServer]
) -> None:
    _, c = serve(servers, tmp_path, "silent")
    t0 = time.monotonic()
    with pytest.raises(RoarkHTTPError) as err:
        c.post_event(event(1), timeout=0.3)
    assert 0.25 <= time.monotonic() - t0 < 5
    assert err.value.status is None
    assert err.value.message == "ReadTimeout"
    c.close()


def test_a_refused_connection_is_a_connect_error(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    c = client(f"http://127.0.0.1:{port}", tmp_path)
    assert failure(c, 1) == (None, "ConnectError")
    c.close()


def test_a_proxy_from_the_environment_carries_the_request(
    tmp_path: Path, servers: list[TinyServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = TinyServer()
    servers.append(proxy)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    c = client("http://roark.invalid", tmp_path)
    assert c.post_event(event(1)).status == 200
    c.close()
    assert proxy.requests == [b"POST http://roark.invalid/v1/integrations/pipecat HTTP/1.1"]


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    crypto = pytest.importorskip("cryptography", reason="cryptography makes the test's cert")
    del crypto
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_is_verified_against_the_trusted_certificates(
    tmp_path: Path, servers: list[TinyServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = _self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server = TinyServer(tls=tls)
    servers.append(server)

    untrusting = client(server.url, tmp_path)
    with pytest.raises(RoarkHTTPError) as err:
        untrusting.post_event(event(1))
    assert (err.value.status, err.value.message) == (None, "ConnectError")
    untrusting.close()

    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # as httpx reads it
    trusting = client(server.url, tmp_path)
    for n in range(3):
        assert trusting.post_event(event(n)).status == 200
    trusting.close()
    assert len(server.requests) == 3


# -- our client's reading of replies (direct connections) -----------------------------------

PRESIGNED = b'{"uploadUrl":"http://127.0.0.1:1/put?X-Sig=abc"}'


def test_a_chunked_reply_is_read_whole_and_the_connection_kept(
    tmp_path: Path, servers: list[TinyServer]
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"7;ext=1\r\n" + PRESIGNED[:7] + b"\r\n"
        b"%x\r\n" % (len(PRESIGNED) - 7) + PRESIGNED[7:] + b"\r\n0\r\nx-trailer: 1\r\n\r\n"
    )
    server, c = serve(servers, tmp_path, script=[(chunked, False)])
    assert c.presign("call-1", 0).uploadUrl == "http://127.0.0.1:1/put?X-Sig=abc"
    assert c.post_event(event(1)).text == '{"ok":true}'
    c.close()
    assert server.connections == 1
    assert (
        server.bodies[0] == b'{"pipecatCallId":"call-1","chunkIndex":0,"contentType":"audio/pcm"}'
    )


def test_an_interim_reply_is_skipped(tmp_path: Path, servers: list[TinyServer]) -> None:
    server, c = serve(servers, tmp_path, script=[(b"HTTP/1.1 100 Continue\r\n\r\n" + OK, False)])
    assert c.post_event(event(1)).text == '{"ok":true}'
    assert c.post_event(event(2)).status == 200
    c.close()
    assert server.connections == 1


def test_connection_close_and_a_reply_read_to_the_close(
    tmp_path: Path, servers: list[TinyServer]
) -> None:
    closing = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nhi"
    to_close = b"HTTP/1.0 202 Accepted\r\ncontent-type: text/plain\r\n\r\nread to the end"
    server, c = serve(servers, tmp_path, script=[(closing, False), (to_close, True)])
    assert c.post_event(event(1)).text == "hi"
    reply = c.post_event(event(2))
    assert (reply.status, reply.text) == (202, "read to the end")
    assert c.post_event(event(3)).status == 200
    c.close()
    assert len(server.requests) == 3
    assert server.connections == 3  # neither reply left its connection reusable


def test_a_kept_alive_connection_closed_under_a_request_is_retried_once_fresh(
    tmp_path: Path, servers: list[TinyServer]
) -> None:
    # The second request meets its (reused) connection closed with no reply: the race with
    # a server dropping an idle connection. It goes again, once, on a new connection.
    server, c = serve(servers, tmp_path, script=[(OK, False), (b"", True)])
    assert c.post_event(event(1)).status == 200
    assert c.post_event(event(2)).status == 200
    c.close()
    assert server.connections == 2
    assert server.bodies[1:] == [server.bodies[1]] * 2  # the same request, twice in all


def test_a_fresh_connection_closed_without_a_reply_is_not_retried(
    tmp_path: Path, servers: list[TinyServer]
) -> None:
    server, c = serve(servers, tmp_path, script=[(b"", True)])
    assert failure(c, 1) == (None, "RemoteProtocolError")
    c.close()
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "cut",
    [
        b'HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n{"upload',  # short body
        b"HTTP/1.1 200 OK\r\ncontent-le",  # inside the headers
        b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n20\r\n{"up',  # inside a chunk
    ],
)
def test_a_reply_cut_off_midway_is_a_network_error_never_retried(
    tmp_path: Path, servers: list[TinyServer], cut: bytes
) -> None:
    server, c = serve(servers, tmp_path, script=[(OK, False), (cut, True)])
    assert c.post_event(event(1)).status == 200
    assert failure(c, 2) == (
        None,
        "RemoteProtocolError",
    )  # on the reused connection: a reply began, so no second try
    c.close()
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    "garbage",
    [b"SPDY/3 200 OK\r\n\r\n", b"HTTP/1.1 2x0 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n"],
)
def test_a_malformed_reply_is_a_protocol_error(
    tmp_path: Path, servers: list[TinyServer], garbage: bytes
) -> None:
    _, c = serve(servers, tmp_path, script=[(garbage, True)])
    assert failure(c, 1) == (None, "RemoteProtocolError")
    c.close()


def test_an_error_reply_keeps_status_reason_and_retry_after(
    tmp_path: Path, servers: list[TinyServer]
) -> None:
    reason = b"x" * 1000
    reply = b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\ncontent-length: %d\r\n\r\n%s" % (
        len(reason),
        reason,
    )
    server, c = serve(servers, tmp_path, script=[(reply, False)])
    with pytest.raises(RoarkHTTPError) as err:
        c.post_event(event(1))
    assert (err.value.status, err.value.message, err.value.retry_after) == (503, "x" * 300, "7")
    assert c.post_event(event(2)).status == 200  # the connection stays usable
    c.close()
    assert server.connections == 1


def test_a_presigned_put_is_sent_byte_exact_with_no_key(
    tmp_path: Path, servers: list[TinyServer]
) -> None:
    server, c = serve(servers, tmp_path)
    pcm = bytes(range(256)) * 1024  # 256 KiB, a chunk's size
    assert c.put_chunk(f"{server.url}/bucket/a%2Fb.pcm?X-Sig=a%2Bb&e=1", pcm).status == 200
    c.close()
    assert server.requests == [b"PUT /bucket/a%2Fb.pcm?X-Sig=a%2Bb&e=1 HTTP/1.1"]
    assert server.bodies == [pcm]


def test_a_put_larger_than_the_socket_buffers_is_sent_whole_and_in_order(
    tmp_path: Path, servers: list[TinyServer]
) -> None:
    server, c = serve(servers, tmp_path)
    pcm = os.urandom(8 * 1024 * 1024)  # the kernel takes it in several sends
    for n in range(2):  # and the kept-alive connection is still in step after
        assert c.put_chunk(f"{server.url}/up/{n}?X-Sig=a", pcm[n:]).status == 200
    c.close()
    assert server.bodies == [pcm, pcm[1:]]
    assert server.connections == 1


def test_no_proxy_sends_direct_even_with_a_proxy_set(
    tmp_path: Path, servers: list[TinyServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, server = TinyServer(), TinyServer()
    servers.extend([proxy, server])
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    c = client(server.url, tmp_path)
    assert c.post_event(event(1)).status == 200
    c.close()
    assert proxy.requests == []
    assert server.requests == [b"POST /v1/integrations/pipecat HTTP/1.1"]


@pytest.mark.parametrize(
    ("path", "sent"),
    [
        ("/a b/c.pcm?x=1", b"/a%20b/c.pcm?x=1"),  # httpx re-encodes what we would not send
        ("/a/../c.pcm", b"/c.pcm"),
        ("/c.pcm?X-Sig=a%2Fb#frag", b"/c.pcm?X-Sig=a%2Fb"),
    ],
)
def test_a_presigned_url_goes_out_as_httpx_would_send_it(
    tmp_path: Path, servers: list[TinyServer], path: str, sent: bytes
) -> None:
    server, c = serve(servers, tmp_path)
    assert c.put_chunk(server.url + path, b"pcm").status == 200
    c.close()
    assert server.requests == [b"PUT " + sent + b" HTTP/1.1"]


def test_an_unusable_presigned_url_is_a_network_error(tmp_path: Path) -> None:
    c = client("http://127.0.0.1:1", tmp_path)
    for url in ("ftp://127.0.0.1/x", "http://[::1/x", "http:///x"):
        with pytest.raises(RoarkHTTPError) as err:
            c.put_chunk(url, b"pcm")
        assert err.value.status is None
    c.close()


def test_a_parting_reply_on_an_idle_connection_is_not_taken_for_ours(tmp_path: Path) -> None:
    # Some servers answer 408 on a connection idle too long, then close it. Read as the
    # reply to our next request, it would fail a request the server never saw.
    parked, parted = threading.Event(), threading.Event()
    seen: list[bytes] = []

    def serve(listener: socket.socket) -> None:
        first, _ = listener.accept()
        seen.append(first.recv(65536))
        first.sendall(OK)
        parked.wait(10)  # the client has its reply and the connection is in its pool
        first.sendall(b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n\r\n")
        first.close()
        parted.set()
        second, _ = listener.accept()
        seen.append(second.recv(65536))
        second.sendall(OK)
        second.close()

    with socket.create_server(("127.0.0.1", 0)) as listener:
        threading.Thread(target=serve, args=(listener,), daemon=True).start()
        c = client(f"http://127.0.0.1:{listener.getsockname()[1]}", tmp_path)
        assert c.post_event(event(1)).status == 200
        since = time.monotonic()
        parked.set()
        wait_until(parted.is_set, what="the server's parting reply")
        # Idle long enough for the connection to be looked at before reuse.
        wait_until(lambda: time.monotonic() - since > 0.3, what="the connection idle 0.3 s")
        assert c.post_event(event(2)).status == 200
        c.close()
    assert len(seen) == 2


def test_a_slow_reader_cannot_stretch_a_put_past_its_write_timeout(tmp_path: Path) -> None:
    # Each send makes progress, so a timeout per send would never fire: the whole send has
    # the timeout, as with sendall.
    stop = threading.Event()
    srv = socket.create_server(("127.0.0.1", 0))

    def trickle() -> None:
        conn, _ = srv.accept()
        with conn:
            while not stop.is_set() and conn.recv(65536):
                stop.wait(0.05)  # ~1.3 MB/s: each send still finds room within its timeout

    threading.Thread(target=trickle, daemon=True).start()
    c = client(f"http://127.0.0.1:{srv.getsockname()[1]}", tmp_path)
    pcm = bytes(64 * 1024 * 1024)  # far more than the socket buffers hold
    t0 = time.monotonic()
    try:
        with pytest.raises(RoarkHTTPError) as err:
            c.put_chunk(f"http://127.0.0.1:{srv.getsockname()[1]}/up?X-Sig=a", pcm, timeout=2.0)
        assert time.monotonic() - t0 < 15  # about 2 s; never the ~50 s of the trickle
        assert err.value.message == "WriteTimeout"
    finally:
        stop.set()
        c.close()
        srv.close()
