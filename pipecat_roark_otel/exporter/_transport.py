"""A minimal HTTP/1.1 keep-alive client on raw sockets, for direct connections.

Delivery sends a few requests per call from threads sharing one GIL, and against a fast
receiver it is CPU work: ``httpx.Client`` around ``http.client`` (its header parsing goes
through the ``email`` package) was more than half of it. This client writes each request
with one send (an audio chunk gathered with its head, not copied into one message) and
parses the reply itself: status line, headers, a body by Content-Length, chunked or up to
the close. Connections are pooled per origin; one idle
for a while is dropped if the server closed it, and a request that meets a reused
connection closed under it (no reply byte yet) is sent once more on a fresh one. Per
request: one send, the reads, and no other system call (each lets the GIL go).
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Final, Literal

import httpx

_MAX_IDLE: Final = 16  # per origin; delivery runs a handful of workers
_LOOK_AFTER: Final = 0.25  # seconds idle before a pooled connection is checked for a close
_MAX_HEAD: Final = 64 * 1024
_MAX_BODY: Final = 16 * 1024 * 1024  # replies are small JSON; anything larger is not Roark
_RECV: Final = 65536
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_NO_BODY: Final = frozenset({204, 304})
_GATHER: Final = hasattr(socket.socket, "sendmsg")  # not on Windows
_GATHER_FROM: Final = 16 * 1024  # bytes of body: below, one joined sendall costs less

Origin = tuple[str, str, int]  # scheme, host as sent (IDNA), port
# Per phase, as httpx names them: connect, write, read.
Timeouts = tuple[float | None, float | None, float | None]
FailureKind = Literal[
    "ConnectError",
    "ConnectTimeout",
    "WriteError",
    "WriteTimeout",
    "ReadError",
    "ReadTimeout",
    "RemoteProtocolError",
]


class TransportFailure(Exception):
    """No usable reply; ``kind`` is the matching httpx exception's name (never a URL)."""

    def __init__(self, kind: FailureKind) -> None:
        super().__init__(kind)
        self.kind: FailureKind = kind


class _Closed(Exception):
    """The peer closed the connection."""


@dataclass(frozen=True, slots=True)
class WireReply:
    status: int
    reason: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]  # names lower-cased
    body: bytes  # as received: a Content-Encoding is the caller's to undo

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def decoded(self) -> bytes:
        coding = (self.header(b"content-encoding") or b"").strip().lower()
        if coding in (b"gzip", b"deflate", b"x-gzip"):
            try:
                return zlib.decompress(self.body, 47)  # zlib or gzip header
            except zlib.error:
                raise TransportFailure("RemoteProtocolError") from None
        return self.body


def origin_of(url: httpx.URL) -> Origin:
    port = url.port or _DEFAULT_PORTS.get(url.scheme)
    if port is None:
        raise ValueError(f"unsupported scheme {url.scheme!r}")
    return url.scheme, url.raw_host.decode("ascii"), port


class _Reader:
    """Buffered reads from one socket; ``received`` says whether any reply byte came."""

    __slots__ = ("_sock", "buf", "received")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.buf = b""
        self.received = False

    def _fill(self) -> None:
        data = self._sock.recv(_RECV)
        if not data:
            raise _Closed
        self.received = True
        self.buf += data

    def until(self, mark: bytes, limit: int) -> bytes:
        while (end := self.buf.find(mark)) < 0:
            if len(self.buf) > limit:
                raise TransportFailure("RemoteProtocolError")
            self._fill()
        found, self.buf = self.buf[:end], self.buf[end + len(mark) :]
        return found

    def exactly(self, n: int) -> bytes:
        if len(self.buf) < n:
            parts, have = [self.buf], len(self.buf)
            while have < n:
                data = self._sock.recv(min(_RECV * 4, n - have))
                if not data:
                    raise _Closed
                parts.append(data)
                have += len(data)
            self.buf = b"".join(parts)
        found, self.buf = self.buf[:n], self.buf[n:]
        return found

    def to_close(self) -> bytes:
        parts = [self.buf]
        size = len(self.buf)
        while data := self._sock.recv(_RECV):
            parts.append(data)
            size += len(data)
            if size > _MAX_BODY:
                raise TransportFailure("RemoteProtocolError")
        self.buf = b""
        return b"".join(parts)


def _read_reply(reader: _Reader) -> tuple[WireReply, bool]:
    """One reply, and whether the connection may carry another request."""
    while True:
        head = reader.until(b"\r\n\r\n", _MAX_HEAD).split(b"\r\n")
        version, _, rest = head[0].partition(b" ")
        code, _, reason = rest.partition(b" ")
        if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise TransportFailure("RemoteProtocolError")
        status = int(code)
        headers: list[tuple[bytes, bytes]] = []
        for line in head[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise TransportFailure("RemoteProtocolError")
            headers.append((name.lower(), value.strip()))
        if not 100 <= status < 200:
            break
        # An interim reply (100 Continue and the like): the real one follows.
    fields = dict(headers)
    tokens = {t.strip() for t in fields.get(b"connection", b"").lower().split(b",")}
    reusable = version == b"HTTP/1.1" and b"close" not in tokens
    if status in _NO_BODY:
        body = b""
    elif b"transfer-encoding" in fields:
        if not fields[b"transfer-encoding"].lower().endswith(b"chunked"):
            raise TransportFailure("RemoteProtocolError")
        body = _chunked(reader)
    elif b"content-length" in fields:
        lengths = {v.strip() for k, v in headers if k == b"content-length"}
        length = lengths.pop()
        if lengths or not length.isdigit() or int(length) > _MAX_BODY:
            raise TransportFailure("RemoteProtocolError")
        body = reader.exactly(int(length))
    else:
        body, reusable = reader.to_close(), False
    if reader.buf:  # bytes we never asked for: the connection is out of step
        reusable = False
    return WireReply(status, reason, version, headers, body), reusable


def _chunked(reader: _Reader) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        line = reader.until(b"\r\n", 1024)
        try:
            n = int(line.partition(b";")[0].strip(), 16)
        except ValueError:
            raise TransportFailure("RemoteProtocolError") from None
        if n == 0:
            while reader.until(b"\r\n", _MAX_HEAD):  # trailers, up to the empty line
                pass
            return b"".join(parts)
        size += n
        if n < 0 or size > _MAX_BODY:
            raise TransportFailure("RemoteProtocolError")
        parts.append(reader.exactly(n))
        if reader.exactly(2) != b"\r\n":
            raise TransportFailure("RemoteProtocolError")


def _timeout(sock: socket.socket, value: float | None) -> None:
    # settimeout() is a system call (FIONBIO) each time, and lets the GIL go: only on change.
    if sock.gettimeout() != value:
        sock.settimeout(value)


def _failure(exc: BaseException, phase: str) -> FailureKind:
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
        return "WriteTimeout" if phase == "write" else "ReadTimeout"
    if isinstance(exc, _Closed):  # httpx: "Server disconnected without sending a response"
        return "RemoteProtocolError"
    return "WriteError" if phase == "write" else "ReadError"


def _readable(sock: socket.socket) -> bool:
    """An idle keep-alive socket is readable only once the server closed it (or misbehaved)."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _send(sock: socket.socket, head: bytes, body: bytes, timeout: float | None) -> None:
    """Head and a large body gathered by the kernel (``sendmsg``), not joined into one
    copy first; a TLS socket has no ``sendmsg``, and small bodies join for less.

    ``timeout`` bounds the whole send, as it does ``sendall``'s: a receiver reading slowly
    cannot stretch it send by send."""
    if len(body) < _GATHER_FROM or isinstance(sock, ssl.SSLSocket) or not _GATHER:
        sock.sendall(head + body)
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    parts = [memoryview(head), memoryview(body)]
    while parts:
        sent = sock.sendmsg(parts)
        while parts and sent >= len(parts[0]):
            sent -= len(parts.pop(0))
        if sent:
            parts[0] = parts[0][sent:]
        if parts and deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("write timed out")
            sock.settimeout(left)


class Http11:
    """Thread-safe: each connection serves one request at a time, idle ones wait in a pool."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        self._ssl = ssl_context
        self._lock = threading.Lock()  # guards _idle and _closed
        self._idle: dict[Origin, list[tuple[socket.socket, float]]] = {}  # with when parked
        self._closed = False

    def request(self, origin: Origin, head: bytes, body: bytes, timeouts: Timeouts) -> WireReply:
        """``head``: the request line and headers, each ending in CRLF, without the blank
        line and without Content-Length (added here)."""
        head = b"%sContent-Length: %d\r\n\r\n" % (head, len(body))
        connect, write, read = timeouts
        sock, reused = self._checkout(origin, connect)
        while True:
            reader, phase = _Reader(sock), "write"
            try:
                _timeout(sock, write)
                _send(sock, head, body, write)
                _timeout(sock, read)
                phase = "read"
                reply, reusable = _read_reply(reader)
                break
            except TransportFailure:
                sock.close()
                raise
            except (_Closed, OSError) as exc:
                sock.close()
                timeout = isinstance(exc, TimeoutError)
                if reused and not reader.received and not timeout:
                    # The server closed the kept-alive connection as we sent: once more, fresh.
                    sock, reused = self._connect(origin, connect), False
                    continue
                raise TransportFailure(_failure(exc, phase)) from None
        if reusable:
            self._checkin(origin, sock)
        else:
            sock.close()
        return reply

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for parked in idle.values():
            for sock, _ in parked:
                sock.close()

    def _checkout(self, origin: Origin, timeout: float | None) -> tuple[socket.socket, bool]:
        while True:
            with self._lock:
                pool = self._idle.get(origin)
                sock, since = pool.pop() if pool else (None, 0.0)
            if sock is None:
                return self._connect(origin, timeout), False
            # Only a connection idle a while can hold a server's parting reply (a 408): look
            # before reusing it. A fresher one closed under us is retried once (request()).
            if time.monotonic() - since < _LOOK_AFTER or not _readable(sock):
                return sock, True
            sock.close()  # closed by the server (or it sent what we never asked for)

    def _checkin(self, origin: Origin, sock: socket.socket) -> None:
        with self._lock:
            pool = self._idle.setdefault(origin, [])
            if not self._closed and len(pool) < _MAX_IDLE:
                pool.append((sock, time.monotonic()))
                return
        sock.close()

    def _connect(self, origin: Origin, timeout: float | None) -> socket.socket:
        scheme, host, port = origin
        try:
            sock = socket.create_connection((host.strip("[]"), port), timeout=timeout)
        except TimeoutError:
            raise TransportFailure("ConnectTimeout") from None
        except OSError:
            raise TransportFailure("ConnectError") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock = self._ssl.wrap_socket(sock, server_hostname=host.strip("[]"))
        except TimeoutError:
            sock.close()
            raise TransportFailure("ConnectTimeout") from None
        except OSError:  # ssl.SSLError (a certificate not trusted, too) is an OSError
            sock.close()
            raise TransportFailure("ConnectError") from None
        return sock
