"""A lean HTTP/1.1 transport for httpx on the standard library's ``http.client``.

httpx's default transport (httpcore + h11) spends several times the CPU per request of
``http.client``; delivery sends two requests per call from threads sharing one GIL, so
that cost is what bounded its throughput. ``httpx.Client`` stays the interface: its
timeouts, headers and proxies from the environment (proxied URLs go through httpx's own
transports, which the client mounts) all apply. Keep-alive connections are pooled per
origin; an idle one the server has closed is dropped before use, never sent on.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
from typing import Final

import httpx

_MAX_IDLE: Final = 16  # per origin; delivery runs a handful of workers
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_DROPPED: Final = frozenset({b"content-length", b"transfer-encoding"})

_Origin = tuple[str, str, int]


class Http11Transport(httpx.BaseTransport):
    """Thread-safe: each connection serves one request at a time, idle ones wait in a pool."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        self._ssl = ssl_context
        self._lock = threading.Lock()  # guards _idle and _closed
        self._idle: dict[_Origin, list[http.client.HTTPConnection]] = {}
        self._closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        port = url.port or _DEFAULT_PORTS.get(url.scheme)
        if port is None:
            raise httpx.UnsupportedProtocol(f"unsupported scheme {url.scheme!r}", request=request)
        origin = (url.scheme, url.host, port)
        timeouts = request.extensions.get("timeout", {})
        body = request.read()
        headers = [(k, v) for k, v in request.headers.raw if k.lower() not in _DROPPED]
        if body or request.method in ("POST", "PUT", "PATCH"):
            headers.append((b"Content-Length", str(len(body)).encode()))
        target = url.raw_path.decode("ascii")
        while True:
            conn, reused = self._checkout(origin, timeouts.get("connect"), request)
            try:
                _send(conn, request.method, target, headers, body, timeouts.get("write"))
                break
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if not reused:  # a reused one may have been closed under us: the next is fresh
                    raise _error(exc, "write", request) from None
        try:
            if conn.sock is not None:
                conn.sock.settimeout(timeouts.get("read"))
            reply = conn.getresponse()
            content = reply.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _error(exc, "read", request) from None
        if reply.will_close:
            conn.close()
        else:
            self._checkin(origin, conn)
        return httpx.Response(
            reply.status,
            headers=reply.getheaders(),
            stream=httpx.ByteStream(content),
            extensions={
                "http_version": b"HTTP/1.1" if reply.version == 11 else b"HTTP/1.0",
                "reason_phrase": reply.reason.encode("latin-1", "replace"),
            },
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def _checkout(
        self, origin: _Origin, timeout: float | None, request: httpx.Request
    ) -> tuple[http.client.HTTPConnection, bool]:
        while True:
            with self._lock:
                pool = self._idle.get(origin)
                conn = pool.pop() if pool else None
            if conn is None:
                return self._connect(origin, timeout, request), False
            if conn.sock is not None and not _readable(conn.sock):
                return conn, True
            conn.close()  # closed by the server (or it sent what we never asked for)

    def _checkin(self, origin: _Origin, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            pool = self._idle.setdefault(origin, [])
            if not self._closed and len(pool) < _MAX_IDLE:
                pool.append(conn)
                return
        conn.close()

    def _connect(
        self, origin: _Origin, timeout: float | None, request: httpx.Request
    ) -> http.client.HTTPConnection:
        scheme, host, port = origin
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.connect()
            assert conn.sock is not None
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _error(exc, "connect", request) from None
        return conn


def _send(
    conn: http.client.HTTPConnection,
    method: str,
    target: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    timeout: float | None,
) -> None:
    if conn.sock is not None:
        conn.sock.settimeout(timeout)
    conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
    for name, value in headers:
        conn.putheader(name.decode("latin-1"), value)
    conn.endheaders(body)  # headers and body in one send


def _readable(sock: socket.socket) -> bool:
    """An idle keep-alive socket is readable only once the server closed it (or misbehaved)."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _error(exc: BaseException, phase: str, request: httpx.Request) -> httpx.TransportError:
    # The message never holds the URL: a presigned one is a credential.
    name = type(exc).__name__
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
        kind: type[httpx.TransportError] = {
            "connect": httpx.ConnectTimeout,
            "write": httpx.WriteTimeout,
        }.get(phase, httpx.ReadTimeout)
        return kind(name, request=request)
    if phase == "connect":
        return httpx.ConnectError(name, request=request)
    if isinstance(exc, http.client.HTTPException):
        return httpx.RemoteProtocolError(name, request=request)
    if phase == "write":
        return httpx.WriteError(name, request=request)
    return httpx.ReadError(name, request=request)
