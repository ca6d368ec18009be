"""The HTTP shell on aiohttp: routing, auth, limits and faults around the store.

One event loop on its own thread answers every connection; store work (SQLite,
files) runs on a small thread pool so a slow write never stalls other requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import math
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote

from aiohttp import web

from . import _contract, _pages
from ._contract import Rejection
from ._faults import FaultDecision, Faults
from ._presign import UPLOAD_PREFIX, Grant, PresignError, Signer
from ._store import RequestRecord, Store, UrlAlreadyUsed

logger = logging.getLogger("pipecat_roark_otel.devserver")

WEBHOOK_PATH = "/v1/integrations/pipecat"
PRESIGN_PATH = "/v1/integrations/pipecat/chunk-upload-url"
_DRAIN_CAP = 256 * 1024 * 1024  # beyond this, an oversized body is not read before replying
_READ_TIMEOUT_S = 60.0
_DEV_BODY_LIMIT = 1 << 20
_DEFAULT_JAEGER = "http://localhost:16686"
_T = TypeVar("_T")


@dataclass
class ServerContext:
    """What every request shares; ``api_keys`` is replaced whole, never mutated."""

    store: Store
    faults: Faults
    signer: Signer
    api_keys: frozenset[str]
    url_ttl_s: float
    max_body_bytes: int
    max_chunk_bytes: int
    clock: Callable[[], float]


_CTX = web.AppKey("ctx", ServerContext)
_POOL = web.AppKey("pool", ThreadPoolExecutor)


class _Dropped(Exception):
    """The request's connection is to be closed with no answer."""


def _json(status: int, obj: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(obj).encode(), content_type="application/json",
        headers=headers,
    )  # fmt: skip


def _html(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html", charset="utf-8")


def _s3_error(exc: PresignError) -> web.Response:
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{exc.code}</Code><Message>{exc.message}</Message></Error>"
    )
    return web.Response(status=exc.status, text=xml, content_type="application/xml")


class _Exchange:
    """One request: its context, body reading and the ingest log line."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.ctx = request.app[_CTX]
        self._pool = request.app[_POOL]
        self.path = request.rel_url.raw_path  # still percent-encoded; ids are unquoted per route
        self.query = request.rel_url.raw_query_string
        self.method = "GET" if request.method == "HEAD" else request.method

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    def auth_problem(self) -> str | None:
        headers = self.request.headers
        key, auth = headers.get("x-roark-api-key"), headers.get("authorization")
        if not key or not auth:
            missing = [n for n, v in (("x-roark-api-key", key), ("authorization", auth)) if not v]
            return f"missing {' and '.join(missing)} header"
        scheme, _, bearer = auth.partition(" ")
        if scheme.lower() != "bearer" or bearer.strip() != key:
            return "authorization must be 'Bearer <same key as x-roark-api-key>'"
        if key not in self.ctx.api_keys:
            return "invalid or revoked API key"
        return None

    def length(self) -> int | None:
        if "chunked" in self.request.headers.get("transfer-encoding", "").lower():
            return None
        return self.request.content_length

    async def body(self, limit: int) -> bytes:
        """The request body; Rejection(411/413/408) for what we refuse to read."""
        n = self.length()
        if n is None:
            raise Rejection(411, "content-length required")
        if n > limit:
            raise Rejection(413, f"body of {n} bytes exceeds the {limit}-byte limit")
        return await self.read(n)

    async def read(self, n: int) -> bytes:
        if n == 0:
            return b""  # aiohttp's empty payload refuses even readexactly(0)
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                return await self.request.content.readexactly(n)
        except TimeoutError:
            raise Rejection(408, "request body not received in time") from None
        except asyncio.IncompleteReadError:
            raise _Dropped from None

    async def discard(self) -> None:
        """Read what the client sends so it sees our reply (or our close), not a reset."""
        n = self.length()
        if n is None or n > _DRAIN_CAP:
            return
        with contextlib.suppress(Rejection, _Dropped):
            await self.read(n)


async def _handle(request: web.Request) -> web.StreamResponse:
    ex = _Exchange(request)
    try:
        resp = await _route(ex)
    except _Dropped:
        resp = None
    except Rejection as rej:
        resp = _json(rej.status, rej.body())
    if resp is None:
        await ex.discard()
        if request.transport is not None:
            request.transport.close()
        return web.Response()  # goes nowhere: the transport is closed
    if ex.length() is None or (ex.length() or 0) > _DRAIN_CAP:
        resp.force_close()
    return resp


async def _route(ex: _Exchange) -> web.StreamResponse | None:
    path = ex.path
    if path.startswith("/_dev/"):
        return await _dev(ex)
    if ex.ctx.faults.is_down:
        return None
    if path in (WEBHOOK_PATH, PRESIGN_PATH) or path.startswith(UPLOAD_PREFIX):
        return await _ingest(ex)
    if ex.method != "GET":
        return _json(405, {"error": f"{ex.method} not allowed on {path}"})
    return await ex.run(_read, ex.ctx.store, path, ex.query)


# -- ingest -----------------------------------------------------------------------------------


_Work = Callable[[], web.StreamResponse | None]


async def _ingest(ex: _Exchange) -> web.StreamResponse | None:
    path = ex.path
    endpoint = (
        "webhook" if path == WEBHOOK_PATH else "presign" if path == PRESIGN_PATH else "upload"
    )
    rec: dict[str, Any] = {
        "time": ex.ctx.clock(),
        "method": ex.method,
        "path": path,
        "endpoint": endpoint,
    }
    try:
        work = await _prepare(ex, endpoint, rec)
    except (Rejection, PresignError, _Dropped) as exc:
        work = functools.partial(_raise, exc)
    # One hop to the pool: the store's work and the log line, which is written before
    # the reply goes out so a client never outruns the log.
    return await ex.run(_finish, ex.ctx.store, work, rec)


def _raise(exc: Exception) -> None:
    raise exc


def _finish(store: Store, work: _Work, rec: dict[str, Any]) -> web.StreamResponse | None:
    resp: web.StreamResponse | None
    try:
        resp = work()
    except Rejection as rej:
        rec["error"] = rej.message
        resp = _json(rej.status, rej.body())
    except PresignError as exc:
        rec["error"] = exc.message
        resp = _s3_error(exc)
    except _Dropped:
        resp = None
    rec.setdefault("status", None if resp is None else resp.status)
    try:
        store.log_request(RequestRecord(**rec))
    except Exception:
        logger.debug("local roark: could not log a request", exc_info=True)
    return resp


async def _prepare(ex: _Exchange, endpoint: str, rec: dict[str, Any]) -> _Work:
    """The network half of an ingest request; returns the store half."""
    decision = ex.ctx.faults.decide(endpoint)
    if decision.latency_s:
        await asyncio.sleep(decision.latency_s)
    if decision.drop or decision.status is not None:
        raw = await _fault_body(ex)
        return functools.partial(_fault, ex.ctx, decision, ex.query, raw, rec)
    expected = "PUT" if endpoint == "upload" else "POST"
    if ex.method != expected:
        resp = _json(405, {"error": f"use {expected} for {ex.path}"})
        return lambda: resp
    if endpoint == "upload":
        return await _upload(ex, rec)
    # Auth before the body is read or parsed: strangers get nothing parsed.
    problem = ex.auth_problem()
    if problem is not None:
        raise Rejection(401, problem)
    raw = await ex.body(ex.ctx.max_body_bytes)
    if endpoint == "webhook":
        return functools.partial(_webhook, ex.ctx, raw, rec)
    return functools.partial(_presign, ex.ctx, raw, rec, _origin(ex.request))


async def _fault_body(ex: _Exchange) -> bytes | None:
    """An authenticated body, read only to label the log line of a faulted request."""
    if ex.path.startswith(UPLOAD_PREFIX) or ex.auth_problem() is not None:
        return None
    try:
        return await ex.body(ex.ctx.max_body_bytes)
    except Rejection:
        return None


def _fault(
    ctx: ServerContext,
    decision: FaultDecision,
    query: str,
    raw: bytes | None,
    rec: dict[str, Any],
) -> web.StreamResponse | None:
    """An injected fault: the request is consumed unverified, labelled only for the log."""
    if rec["endpoint"] == "upload":
        params = parse_qs(query)
        rec["call_id"] = params.get("X-Roark-Call", [None])[0]
        chunk = params.get("X-Roark-Chunk", [""])[0]
        rec["chunk_index"] = int(chunk) if chunk.isdigit() and len(chunk) < 10 else None
    elif raw is not None:
        with contextlib.suppress(Rejection):
            _label(rec, _contract.parse_object(raw))
    if decision.drop:
        rec["fault"] = "drop"
        return None
    assert decision.status is not None
    rec["fault"] = "status"
    headers = {}
    if decision.retry_after is not None:
        headers["retry-after"] = _retry_after(
            decision.retry_after, decision.retry_after_as_date, ctx.clock()
        )
    body = {"error": f"injected fault: {decision.status}", "statusCode": decision.status}
    return _json(decision.status, body, headers)


def _label(rec: dict[str, Any], obj: dict[str, Any]) -> None:
    """Name the call/event/chunk in the log line, even for a request refused later."""
    for key, field in (("call_id", "pipecatCallId"), ("event", "event")):
        if isinstance(obj.get(field), str):
            rec[key] = obj[field]
    index = obj.get("chunkIndex")
    if isinstance(index, int) and 0 <= index <= _contract.MAX_CHUNK_INDEX:
        rec["chunk_index"] = index


def _webhook(ctx: ServerContext, raw: bytes, rec: dict[str, Any]) -> web.StreamResponse:
    obj = _contract.parse_object(raw)
    _label(rec, obj)
    body = _contract.webhook_body(obj)
    store, now = ctx.store, ctx.clock()
    record = store.record_started if body["event"] == "call-started" else store.record_ended
    duplicate = record(body, now)
    data = {"received": True, "pipecatCallId": body["pipecatCallId"], "duplicate": duplicate}
    return _json(200, {"data": data})


def _presign(
    ctx: ServerContext, raw: bytes, rec: dict[str, Any], origin: str
) -> web.StreamResponse:
    obj = _contract.parse_object(raw)
    _label(rec, obj)
    req = _contract.chunk_request(obj)
    omit_url, expired = ctx.faults.take_presign_faults()
    now = ctx.clock()
    ttl = 0.0 if expired else ctx.url_ttl_s
    grant, target = ctx.signer.issue(
        req.pipecatCallId, req.chunkIndex, expires_ms=math.floor((now + ttl) * 1000)
    )
    data: dict[str, Any] = {
        "uploadUrl": origin + target,
        "s3Key": grant.s3_key,
        "chunkIndex": req.chunkIndex,
        "expiresInSeconds": int(ttl),
        "method": "PUT",
        "contentType": "audio/pcm",
    }
    if omit_url:
        del data["uploadUrl"]
    return _json(200, {"data": data})


def _origin(request: web.Request) -> str:
    """Presigned URLs point where the client reached us (works behind port mappings)."""
    host = request.headers.get("host")
    if not host:
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        host = f"127.0.0.1:{sock[1]}" if sock else "127.0.0.1"
    return f"http://{host}"


async def _upload(ex: _Exchange, rec: dict[str, Any]) -> _Work:
    """Check the URL and headers, read the chunk; the store half keeps it."""
    headers = ex.request.headers
    grant, bad_signature = None, None
    try:
        grant = ex.ctx.signer.verify(ex.path, ex.query, now_ms=math.floor(ex.ctx.clock() * 1000))
        rec.update(call_id=grant.call_id, chunk_index=grant.chunk_index)
    except PresignError as exc:
        bad_signature = exc
    if headers.get("authorization") or headers.get("x-roark-api-key"):
        raise PresignError(
            "InvalidArgument",
            "Only one auth mechanism allowed; send no authorization or "
            "x-roark-api-key header with a presigned URL",
            status=400,
        )
    if bad_signature is not None or grant is None:
        raise bad_signature or PresignError("AccessDenied", "Access Denied")
    if headers.get("content-type", "").split(";")[0].strip() != "audio/pcm":
        raise PresignError("SignatureDoesNotMatch", "content-type must be audio/pcm")
    n = ex.length()
    if n is None:
        raise PresignError("MissingContentLength", "content-length required", status=411)
    if n > ex.ctx.max_chunk_bytes:
        raise PresignError(
            "EntityTooLarge",
            f"chunk of {n} bytes exceeds {ex.ctx.max_chunk_bytes} bytes",
            status=413,
        )
    data = await ex.read(n)
    return functools.partial(_put, ex.ctx, grant, data)


def _put(ctx: ServerContext, grant: Grant, data: bytes) -> web.StreamResponse:
    try:
        ctx.store.put_chunk(grant.call_id, grant.chunk_index, data, grant.nonce, ctx.clock())
    except UrlAlreadyUsed:
        raise PresignError("AccessDenied", "Request has already been used") from None
    etag = hashlib.md5(data).hexdigest()
    return web.Response(
        status=200, body=b"", content_type="text/plain", headers={"etag": f'"{etag}"'}
    )


# -- read-back and dev ------------------------------------------------------------------------


def _read(store: Store, path: str, query: str) -> web.Response:
    """The read-back routes; runs on the pool (SQLite reads, page rendering)."""
    if path == "/":
        return _html(200, _pages.render_index(store.calls()))
    if path == "/api/calls":
        return _json(200, {"data": store.calls()})
    if path == "/api/requests":
        call_id = parse_qs(query).get("callId", [None])[0]
        return _json(200, {"data": store.requests(call_id)})
    if path.startswith("/api/calls/"):
        rest = path.removeprefix("/api/calls/")
        if rest.endswith("/recording.wav"):
            wav = store.wav_bytes(unquote(rest.removesuffix("/recording.wav")))
            if wav is None:
                return _json(404, {"error": "no recording"})
            return web.Response(status=200, body=wav, content_type="audio/wav")
        call = store.call(unquote(rest))
        if call is None:
            return _json(404, {"error": "no such call"})
        return _json(200, {"data": call})
    if path.startswith("/calls/"):
        call = store.call(unquote(path.removeprefix("/calls/")))
        if call is None:
            return _html(404, "<h1>No such call</h1>")
        peaks = store.peaks(call["pipecatCallId"]) if call["wav_path"] else None
        return _html(200, _pages.render_call(call, peaks))
    return _json(404, {"error": f"no route for {path}"})


async def _dev(ex: _Exchange) -> web.StreamResponse:
    """Fault switches and trace links: they change what others see, so they need the key."""
    path, method, faults = ex.path, ex.method, ex.ctx.faults
    problem = ex.auth_problem()
    if problem is not None:
        raise Rejection(401, problem)
    if path == "/_dev/faults":
        if method == "DELETE":
            faults.clear()
        elif method == "POST":
            spec = _contract.parse_object(await ex.body(_DEV_BODY_LIMIT))
            try:
                faults.apply(spec)
            except ValueError as exc:
                raise Rejection(422, f"invalid fault spec: {exc}") from None
        elif method != "GET":
            raise Rejection(405, f"{method} not allowed on {path}")
        return _json(200, {"data": faults.snapshot()})
    if path.startswith("/_dev/calls/") and path.endswith("/trace") and method == "POST":
        call_id = unquote(path.removeprefix("/_dev/calls/").removesuffix("/trace"))
        obj = _contract.parse_object(await ex.body(_DEV_BODY_LIMIT))
        trace_id, jaeger = obj.get("traceId"), obj.get("jaegerUrl", _DEFAULT_JAEGER)
        if not isinstance(trace_id, str) or not trace_id:
            raise Rejection(422, "traceId must be a non-empty string")
        if not isinstance(jaeger, str) or not jaeger.startswith(("http://", "https://")):
            raise Rejection(422, "jaegerUrl must be an http(s) URL")
        await ex.run(ex.ctx.store.set_trace, call_id, trace_id, jaeger, ex.ctx.clock())
        return _json(200, {"data": {"traceId": trace_id, "jaegerUrl": jaeger}})
    raise Rejection(404, f"no route for {method} {path}")


def _retry_after(seconds: float, as_date: bool, now: float) -> str:
    """Retry-After in either RFC 9110 form; fractional seconds are sent as written."""
    if as_date:
        return formatdate(now + seconds, usegmt=True)
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


# -- the server thread ------------------------------------------------------------------------


class AppServer:
    """The aiohttp app on a daemon thread with its own event loop."""

    def __init__(self, ctx: ServerContext, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, port), family=family, backlog=512)
        self.port: int = self._sock.getsockname()[1]
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="local-roark-store")
        app = web.Application(client_max_size=max(ctx.max_body_bytes, ctx.max_chunk_bytes) + 1)
        app[_CTX], app[_POOL] = ctx, self._pool
        app.router.add_route("*", "/{tail:.*}", _handle)
        self._loop = asyncio.new_event_loop()
        # In-flight requests get this long once stop() is called; then they are cancelled.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="local-roark", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()

    async def _start(self) -> None:
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()

    def stop(self, timeout: float) -> None:
        """Stop accepting, let live requests finish (up to 2 s), close every connection."""
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout + 5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            # An unclosed loop warns from the garbage collector, at any later moment.
            self._loop.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._sock.close()
