"""The HTTP edge: Roark's two endpoints with the key, and a bare client for presigned PUTs."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import pydantic
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, detach, set_value

from ..config import RoarkSettings
from ._payloads import ChunkUploadRequest, PresignReply
from ._transport import Http11, Origin, TransportFailure, origin_of

EVENTS_PATH: Final = "/v1/integrations/pipecat"
PRESIGN_PATH: Final = "/v1/integrations/pipecat/chunk-upload-url"
PCM_CONTENT_TYPE: Final = "audio/pcm"
_MESSAGE_MAX: Final = 300
_USER_AGENT: Final = "pipecat-roark-otel"
# A target sent as given: what httpx would send unchanged (no re-encoding needed).
_PLAIN_TARGET: Final = re.compile(
    r"/(?:[A-Za-z0-9\-_~:/?@!$&'()*+,;=]|%[0-9A-Fa-f]{2}|\.(?<!/\.))*"
)
_ORIGINS_KEPT: Final = 64  # routing decisions remembered (Roark, its storage)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    text: str


class RoarkHTTPError(Exception):
    """A failed request. ``status`` is ``None`` for network errors and unusable replies.

    The message holds the server's reason (truncated) or the error's type, never a URL or header.
    """

    def __init__(self, status: int | None, message: str, retry_after: str | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}" if status is not None else message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


_ours: ContextVar[bool] = ContextVar("pipecat_roark_otel_request", default=False)


class _WithoutQuery(logging.Filter):
    """httpx logs every request's full URL at INFO; a presigned URL's query is a credential."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _ours.get() and isinstance(record.args, tuple):
            record.args = tuple(
                a.copy_with(query=None) if isinstance(a, httpx.URL) else a for a in record.args
            )
        return True


logging.getLogger("httpx").addFilter(_WithoutQuery())
# Our own client's request lines, as httpx words its own (at DEBUG, and without the query).
_requests: Final = logging.getLogger("pipecat_roark_otel.http")


def _json(body: dict[str, Any]) -> bytes:
    # What httpx's ``json=`` sends, without its per-request encoder setup.
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


@contextmanager
def _suppressed() -> Iterator[None]:
    # Rule 10: the same key the SDK's BatchProcessor sets around its own exports.
    token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
    ours = _ours.set(True)
    try:
        yield
    finally:
        _ours.reset(ours)
        detach(token)


def _check(status: int, text: str, retry_after: str | None) -> Reply:
    if not 200 <= status < 300:
        raise RoarkHTTPError(status, text[:_MESSAGE_MAX], retry_after)
    return Reply(status, text)


def _proxied(client: httpx.Client, url: httpx.URL) -> bool:
    """Whether httpx routes ``url`` through a proxy from the environment (HTTP(S)_PROXY,
    ALL_PROXY, NO_PROXY), by its own rules as read when the client was made."""
    route = getattr(client, "_transport_for_url", None)
    default = getattr(client, "_transport", None)
    if route is None or default is None:  # an httpx we do not know: it routes everything
        return True
    return route(url) is not default


def _route(client: httpx.Client, scheme: str, netloc: str) -> tuple[Origin, bytes] | None:
    """The origin and Host header to reach ``scheme://netloc`` directly; None if httpx must."""
    if scheme not in ("http", "https") or not netloc or "@" in netloc:  # userinfo: httpx's
        return None
    try:
        url = httpx.URL(f"{scheme}://{netloc}/")
    except httpx.InvalidURL:
        return None
    if not url.host or _proxied(client, url):
        return None
    return origin_of(url), url.netloc


def _header_lines(headers: httpx.Headers) -> bytes:
    # The compression httpx offers (br, zstd when installed) is its to undo, not ours.
    skip = (b"accept-encoding", b"connection")
    return b"".join(b"%s: %s\r\n" % (k, v) for k, v in headers.raw if k.lower() not in skip)


@dataclass(frozen=True, slots=True)
class _Direct:
    """Where to send one URL ourselves: the connection's origin, Host, request target."""

    origin: Origin
    host: bytes
    target: bytes

    def shown(self) -> str:  # for the request log: never the query (presigned URLs)
        return f"{self.origin[0]}://{self.host.decode()}{self.target.partition(b'?')[0].decode()}"


class RoarkClient:
    """Synchronous, used only from delivery threads; thread-safe.

    Direct connections (no ``transport=`` given, no proxy from the environment for the
    URL) go through :class:`Http11`, our own keep-alive HTTP/1.1 client, with header
    lines encoded once. Otherwise requests go through ``httpx.Client``: a given transport
    (tests plug faults in there) and httpx's proxy transports apply exactly as httpx
    would apply them.
    """

    def __init__(
        self,
        settings: RoarkSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._events_url = settings.base_url + EVENTS_PATH
        self._presign_url = settings.base_url + PRESIGN_PATH
        self._timeout = timeout
        tls = httpx.create_ssl_context()
        self._api = httpx.Client(
            timeout=timeout,
            headers={
                "x-roark-api-key": settings.api_key,
                "authorization": f"Bearer {settings.api_key}",
                "user-agent": _USER_AGENT,
            },
            transport=transport,
            verify=tls,
        )
        # Presigned URLs reject any auth header: a separate client that never has one.
        self._bare = httpx.Client(
            timeout=timeout, headers={"user-agent": _USER_AGENT}, transport=transport, verify=tls
        )
        self._json_headers = httpx.Headers(self._api.headers)
        self._json_headers["content-type"] = "application/json"
        self._pcm_headers = httpx.Headers(self._bare.headers)
        self._pcm_headers["content-type"] = PCM_CONTENT_TYPE
        self._wire = Http11(tls) if transport is None else None
        self._json_lines = _header_lines(self._json_headers)
        self._pcm_lines = _header_lines(self._pcm_headers)
        self._routes: dict[tuple[str, str], tuple[Origin, bytes] | None] = {}
        self._events = self._direct(self._api, self._events_url)
        self._presign = self._direct(self._api, self._presign_url)

    def _direct(self, client: httpx.Client, url: str) -> _Direct | None:
        """How to send ``url`` ourselves, or None for httpx to send it (transport=, a
        proxy, a URL whose target httpx would have to re-encode)."""
        if self._wire is None:
            return None
        try:
            parts = urlsplit(url)
        except ValueError:  # httpx says why
            return None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not _PLAIN_TARGET.fullmatch(target):
            return None
        key = (parts.scheme, parts.netloc)
        if key in self._routes:
            route = self._routes[key]
        else:
            route = _route(client, *key)
            if len(self._routes) < _ORIGINS_KEPT:
                self._routes[key] = route
        return None if route is None else _Direct(route[0], route[1], target.encode("ascii"))

    def _send(
        self,
        client: httpx.Client,
        method: str,
        url: str,
        direct: _Direct | None,
        timeout: float | None,
        content: bytes,
        headers: httpx.Headers,
        lines: bytes,
    ) -> Reply:
        limit = self._timeout if timeout is None else timeout
        if direct is not None and self._wire is not None:
            head = b"%s %s HTTP/1.1\r\nHost: %s\r\n%s" % (
                method.encode(),
                direct.target,
                direct.host,
                lines,
            )
            try:
                with _suppressed():
                    wire = self._wire.request(direct.origin, head, content, (limit,) * 3)
                body = wire.decoded()
            except TransportFailure as exc:
                raise RoarkHTTPError(None, exc.kind) from None
            if _requests.isEnabledFor(logging.DEBUG):
                reason = wire.reason.decode("latin-1")
                line = f'{method} {direct.shown()} "HTTP/1.1 {wire.status} {reason}"'
                _requests.debug("HTTP Request: %s", line)
            retry_after = wire.header(b"retry-after")
            return _check(
                wire.status,
                body.decode("utf-8", "replace"),
                None if retry_after is None else retry_after.decode("latin-1"),
            )
        try:
            request = httpx.Request(
                method,
                url,
                content=content,
                headers=headers,
                extensions={"timeout": httpx.Timeout(limit).as_dict()},
            )
            with _suppressed():
                response = client.send(request)
        except httpx.HTTPError as exc:  # no str(exc): it may carry a presigned URL
            raise RoarkHTTPError(None, type(exc).__name__) from None
        except httpx.InvalidURL:
            raise RoarkHTTPError(None, "InvalidURL") from None
        return _check(response.status_code, response.text, response.headers.get("retry-after"))

    def post_event(self, body: bytes | dict[str, Any], *, timeout: float | None = None) -> Reply:
        """``body``: the event, as JSON already (a model's ``wire_json()``) or a dict."""
        content = body if isinstance(body, bytes) else _json(body)
        url, direct, lines = self._events_url, self._events, self._json_lines
        return self._send(
            self._api, "POST", url, direct, timeout, content, self._json_headers, lines
        )

    def presign(self, call_id: str, index: int, *, timeout: float | None = None) -> PresignReply:
        request = ChunkUploadRequest(pipecatCallId=call_id, chunkIndex=index).wire_json()
        url, direct, lines = self._presign_url, self._presign, self._json_lines
        reply = self._send(
            self._api, "POST", url, direct, timeout, request, self._json_headers, lines
        )
        try:
            return PresignReply.parse_reply(json.loads(reply.text))
        except (ValueError, pydantic.ValidationError):
            raise RoarkHTTPError(None, "presign reply without a usable uploadUrl") from None

    def put_chunk(self, url: str, pcm: bytes, *, timeout: float | None = None) -> Reply:
        direct = self._direct(self._bare, url)
        return self._send(
            self._bare, "PUT", url, direct, timeout, pcm, self._pcm_headers, self._pcm_lines
        )

    def close(self) -> None:
        self._api.close()
        self._bare.close()
        if self._wire is not None:
            self._wire.close()


class LazyClient:
    """One :class:`RoarkClient`, made on first use (delivery threads share it)."""

    def __init__(self, factory: Callable[[], RoarkClient]) -> None:
        self.factory = factory
        self._lock = threading.Lock()  # guards _client
        self._client: RoarkClient | None = None

    def get(self) -> RoarkClient:
        with self._lock:
            if self._client is None:
                self._client = self.factory()
            return self._client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
