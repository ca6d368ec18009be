"""OTLP/HTTP (protobuf) on aiohttp: /v1/traces, /v1/logs and /health, every body bounded."""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ._auth import BearerAuth
from ._ingest import Ingest, Unavailable, logs_response, trace_response

PROTOBUF: Final = "application/x-protobuf"
RETRY_AFTER_S: Final = "5"
_WBITS: Final = {"gzip": 31, "deflate": 15}


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int  # compressed, and again once decompressed
    read_timeout: float


class _TooLarge(Exception):
    pass


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """At most ``limit`` bytes out, however small the input (a bomb costs ``limit``, no more)."""
    if encoding in ("", "identity"):
        return body
    d = zlib.decompressobj(_WBITS[encoding])
    out = d.decompress(body, limit + 1)
    if len(out) > limit or d.unconsumed_tail:
        raise _TooLarge
    if not d.eof:
        raise ValueError("truncated compressed body")
    return out


def _text(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(ingest: Ingest, auth: BearerAuth, limits: Limits) -> web.Application:
    async def body_of(request: web.Request) -> bytes | web.Response:
        if not auth.allows(request.headers.get("Authorization")):
            return _text(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
        if ingest.closed:
            return _text(503, "draining", **{"Retry-After": RETRY_AFTER_S})
        if request.content_type != PROTOBUF:
            return _text(415, f"only {PROTOBUF} is accepted")
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ("", "identity", *_WBITS):
            return _text(415, f"unsupported Content-Encoding {encoding!r}")
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        if request.content_length is None and not chunked:
            return _text(411, "Content-Length required")
        if (request.content_length or 0) > limits.max_body_bytes:
            return _text(413, f"body larger than {limits.max_body_bytes} bytes")
        try:
            # aiohttp stops a chunked body at client_max_size (HTTP 413).
            raw = await asyncio.wait_for(request.read(), limits.read_timeout)
            return decompress(raw, encoding, limits.max_body_bytes)
        except TimeoutError:
            return _text(408, "body not received in time")
        except _TooLarge:
            return _text(413, f"decompressed body larger than {limits.max_body_bytes} bytes")
        except (ValueError, zlib.error):
            return _text(400, "body does not decompress")

    def export(store: Callable[[bytes], bytes]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            body = await body_of(request)
            if isinstance(body, web.Response):
                return body
            try:
                # Parsing and the outbox writes are blocking work: off the loop.
                answer = await asyncio.get_running_loop().run_in_executor(None, store, body)
            except DecodeError:
                return _text(400, "not an OTLP protobuf request")
            except Unavailable as exc:
                return _text(503, f"not stored: {exc}", **{"Retry-After": RETRY_AFTER_S})
            return web.Response(status=200, body=answer, content_type=PROTOBUF)

        return handler

    def store_traces(body: bytes) -> bytes:
        request = ExportTraceServiceRequest.FromString(body)
        return trace_response(ingest.traces(request)).SerializeToString()

    def store_logs(body: bytes) -> bytes:
        request = ExportLogsServiceRequest.FromString(body)
        return logs_response(ingest.logs(request)).SerializeToString()

    async def health(_request: web.Request) -> web.Response:
        status = "draining" if ingest.closed else "ok"
        body = {"status": status, "counts": ingest.stats()}
        return web.Response(
            status=503 if ingest.closed else 200,
            text=json.dumps(body),
            content_type="application/json",
        )

    app = web.Application(client_max_size=limits.max_body_bytes)
    app.router.add_post("/v1/traces", export(store_traces))
    app.router.add_post("/v1/logs", export(store_logs))
    app.router.add_get("/health", health)
    return app
