"""The HTTP edge: Roark's two endpoints with the key, and a bare client for presigned PUTs."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

import httpx
import pydantic
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, detach, set_value

from ..config import RoarkSettings
from ._payloads import ChunkUploadRequest, PresignReply
from ._transport import Http11Transport

EVENTS_PATH: Final = "/v1/integrations/pipecat"
PRESIGN_PATH: Final = "/v1/integrations/pipecat/chunk-upload-url"
PCM_CONTENT_TYPE: Final = "audio/pcm"
_MESSAGE_MAX: Final = 300
_USER_AGENT: Final = "pipecat-roark-otel"


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


def _check(response: httpx.Response) -> Reply:
    if not 200 <= response.status_code < 300:
        message = response.text[:_MESSAGE_MAX]
        raise RoarkHTTPError(response.status_code, message, response.headers.get("retry-after"))
    return Reply(response.status_code, response.text)


def _json(body: dict[str, Any]) -> bytes:
    # What httpx's ``json=`` sends, without its per-request encoder setup.
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


class RoarkClient:
    """Synchronous, used only from delivery threads; ``httpx.Client`` is thread-safe.

    Requests are built once per call of ours (URL parsed once, headers merged once) and go
    through ``Client.send``: the client's proxies, TLS and transport still apply, without
    ``Client.request``'s merging of URL, headers, cookies and params on every request.
    Direct connections use :class:`Http11Transport` unless a transport is given.
    """

    def __init__(
        self,
        settings: RoarkSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._events_url = httpx.URL(settings.base_url + EVENTS_PATH)
        self._presign_url = httpx.URL(settings.base_url + PRESIGN_PATH)
        self._timeout = timeout
        route: dict[str, Any] = {"transport": transport}
        if transport is None:
            # A catch-all mount rather than transport=: httpx then still mounts its own
            # transports for proxies from the environment, and those take precedence.
            route = {"mounts": {"all://": Http11Transport(httpx.create_ssl_context())}}
        self._api = httpx.Client(
            timeout=timeout,
            headers={
                "x-roark-api-key": settings.api_key,
                "authorization": f"Bearer {settings.api_key}",
                "user-agent": _USER_AGENT,
            },
            **route,
        )
        # Presigned URLs reject any auth header: a separate client that never has one.
        self._bare = httpx.Client(timeout=timeout, headers={"user-agent": _USER_AGENT}, **route)
        self._json_headers = httpx.Headers(self._api.headers)
        self._json_headers["content-type"] = "application/json"
        self._pcm_headers = httpx.Headers(self._bare.headers)
        self._pcm_headers["content-type"] = PCM_CONTENT_TYPE

    def _send(
        self,
        client: httpx.Client,
        method: str,
        url: httpx.URL | str,
        timeout: float | None,
        content: bytes,
        headers: httpx.Headers,
    ) -> Reply:
        limit = httpx.Timeout(self._timeout if timeout is None else timeout)
        try:
            request = httpx.Request(
                method,
                url,
                content=content,
                headers=headers,
                extensions={"timeout": limit.as_dict()},
            )
            with _suppressed():
                response = client.send(request)
        except httpx.HTTPError as exc:  # no str(exc): it may carry a presigned URL
            raise RoarkHTTPError(None, type(exc).__name__) from None
        return _check(response)

    def post_event(self, body: dict[str, Any], *, timeout: float | None = None) -> Reply:
        return self._send(
            self._api, "POST", self._events_url, timeout, _json(body), self._json_headers
        )

    def presign(self, call_id: str, index: int, *, timeout: float | None = None) -> PresignReply:
        request = _json(ChunkUploadRequest(pipecatCallId=call_id, chunkIndex=index).wire())
        reply = self._send(
            self._api, "POST", self._presign_url, timeout, request, self._json_headers
        )
        try:
            return PresignReply.parse_reply(json.loads(reply.text))
        except (ValueError, pydantic.ValidationError):
            raise RoarkHTTPError(None, "presign reply without a usable uploadUrl") from None

    def put_chunk(self, url: str, pcm: bytes, *, timeout: float | None = None) -> Reply:
        return self._send(self._bare, "PUT", url, timeout, pcm, self._pcm_headers)

    def close(self) -> None:
        self._api.close()
        self._bare.close()


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
