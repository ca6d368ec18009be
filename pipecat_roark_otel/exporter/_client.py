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


class RoarkClient:
    """Synchronous, used only from delivery threads; ``httpx.Client`` is thread-safe."""

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
        self._api = httpx.Client(
            transport=transport,
            timeout=timeout,
            headers={
                "x-roark-api-key": settings.api_key,
                "authorization": f"Bearer {settings.api_key}",
                "user-agent": _USER_AGENT,
            },
        )
        # Presigned URLs reject any auth header: a separate client that never has one.
        self._bare = httpx.Client(
            transport=transport, timeout=timeout, headers={"user-agent": _USER_AGENT}
        )

    def _send(
        self, client: httpx.Client, method: str, url: str, timeout: float | None, **kw: Any
    ) -> Reply:
        try:
            with _suppressed():
                response = client.request(
                    method, url, timeout=self._timeout if timeout is None else timeout, **kw
                )
        except httpx.HTTPError as exc:  # no str(exc): it may carry a presigned URL
            raise RoarkHTTPError(None, type(exc).__name__) from None
        return _check(response)

    def post_event(self, body: dict[str, Any], *, timeout: float | None = None) -> Reply:
        return self._send(self._api, "POST", self._events_url, timeout, json=body)

    def presign(self, call_id: str, index: int, *, timeout: float | None = None) -> PresignReply:
        request = ChunkUploadRequest(pipecatCallId=call_id, chunkIndex=index).wire()
        reply = self._send(self._api, "POST", self._presign_url, timeout, json=request)
        try:
            return PresignReply.parse_reply(json.loads(reply.text))
        except (ValueError, pydantic.ValidationError):
            raise RoarkHTTPError(None, "presign reply without a usable uploadUrl") from None

    def put_chunk(self, url: str, pcm: bytes, *, timeout: float | None = None) -> Reply:
        headers = {"content-type": PCM_CONTENT_TYPE}
        return self._send(self._bare, "PUT", url, timeout, content=pcm, headers=headers)

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
