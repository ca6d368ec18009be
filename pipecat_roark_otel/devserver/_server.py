"""The HTTP shell: routing, auth, limits and faults around the store. One thread per connection."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from . import _pages, _validate
from ._faults import FaultDecision, Faults
from ._presign import UPLOAD_PREFIX, PresignError, Signer
from ._store import RequestRecord, Store, UrlAlreadyUsed
from ._validate import Rejection

logger = logging.getLogger("pipecat_roark_otel.devserver")

WEBHOOK_PATH = "/v1/integrations/pipecat"
PRESIGN_PATH = "/v1/integrations/pipecat/chunk-upload-url"
_DRAIN_CAP = 256 * 1024 * 1024  # beyond this, an oversized body is not read before replying
_DEFAULT_JAEGER = "http://localhost:16686"


@dataclass
class ServerContext:
    """What every handler thread shares; ``api_keys`` is replaced whole, never mutated."""

    store: Store
    faults: Faults
    signer: Signer
    api_keys: frozenset[str]
    url_ttl_s: float
    max_body_bytes: int
    max_chunk_bytes: int
    clock: Callable[[], float]


class RoarkHTTPServer(ThreadingHTTPServer):
    """Tracks live connections so ``stop()`` can close keep-alive sockets and join handlers."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], ctx: ServerContext) -> None:
        self.ctx = ctx
        # Guards _live: handler threads remove themselves while stop() iterates.
        self._live_lock = threading.Lock()
        self._live: dict[socket.socket, threading.Thread] = {}
        super().__init__(address, _Handler)

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="local-roark-conn",
            daemon=True,
        )
        if isinstance(request, socket.socket):
            with self._live_lock:
                self._live[request] = thread
        thread.start()

    def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        if isinstance(request, socket.socket):
            with self._live_lock:
                self._live.pop(request, None)
        super().shutdown_request(request)

    def close_connections(self, timeout: float) -> None:
        """Half-close every live connection, then give its handler ``timeout`` to finish."""
        with self._live_lock:
            live = list(self._live.items())
        for sock, _ in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)
        deadline = time.monotonic() + timeout
        for _, thread in live:
            thread.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("local roark: error handling a request", exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: RoarkHTTPServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes; no 40 ms stalls
    server_version = "LocalRoark/0.1"

    # -- plumbing -----------------------------------------------------------------------

    @property
    def ctx(self) -> ServerContext:
        return self.server.ctx

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("local roark: " + format, *args)

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._flush_log(status)
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", headers)

    def _s3_error(self, status: int, code: str, message: str) -> None:
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        )
        self._send(status, xml.encode(), "application/xml")

    def _length(self) -> int | None:
        try:
            return max(0, int(self.headers.get("content-length", "")))
        except ValueError:
            return None

    def _drain(self, n: int | None) -> None:
        """Read and discard the body so the client sees our reply, not a reset."""
        if n is None or n > _DRAIN_CAP:
            self.close_connection = True
            return
        while n > 0:
            got = self.rfile.read(min(n, 1 << 20))
            if not got:
                break
            n -= len(got)

    def _read_body(self, limit: int) -> bytes:
        """The request body; Rejection(411/413) after draining what we refuse."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self.close_connection = True
            raise Rejection(411, "content-length required")
        n = self._length()
        if n is None:
            self.close_connection = True
            raise Rejection(411, "content-length required")
        if n > limit:
            self._drain(n)
            raise Rejection(413, f"body of {n} bytes exceeds the {limit}-byte limit")
        return self.rfile.read(n)

    def _apply_fault(self, decision: FaultDecision, rec: dict[str, Any], query: str) -> bool:
        """Enact a fault; True if the request was consumed by it."""
        if decision.latency_s:
            time.sleep(decision.latency_s)
        if not decision.drop and decision.status is None:
            return False
        n = self._length()
        if n is not None and n <= self.ctx.max_body_bytes and rec["endpoint"] != "upload":
            self._label(rec, self.rfile.read(n))
        else:
            self._drain(n)
        if rec["endpoint"] == "upload":  # unverified: only to label the log line
            params = parse_qs(query)
            rec["call_id"] = params.get("X-Roark-Call", [None])[0]
            chunk = params.get("X-Roark-Chunk", [""])[0]
            rec["chunk_index"] = int(chunk) if chunk.isdigit() else None
        if decision.drop:
            self.close_connection = True
            rec["fault"] = "drop"
            return True
        if decision.status is not None:
            rec["fault"] = "status"
            headers = {}
            if decision.retry_after is not None:
                headers["retry-after"] = _retry_after(
                    decision.retry_after, decision.retry_after_as_date, self.ctx.clock()
                )
            self._json(
                decision.status,
                {"error": f"injected fault: {decision.status}", "statusCode": decision.status},
                headers,
            )
            return True
        return False

    @staticmethod
    def _label(rec: dict[str, Any], body: bytes) -> None:
        """Name the call/event/chunk in the log line, even for a request refused later."""
        with contextlib.suppress(Rejection):
            peek = _validate.parse_object(body)
            for key, field in (("call_id", "pipecatCallId"), ("event", "event")):
                if isinstance(peek.get(field), str):
                    rec[key] = peek[field]
            if isinstance(peek.get("chunkIndex"), int):
                rec["chunk_index"] = peek["chunkIndex"]

    def _auth_problem(self) -> str | None:
        key = self.headers.get("x-roark-api-key")
        auth = self.headers.get("authorization")
        if not key or not auth:
            missing = [n for n, v in (("x-roark-api-key", key), ("authorization", auth)) if not v]
            return f"missing {' and '.join(missing)} header"
        scheme, _, bearer = auth.partition(" ")
        if scheme.lower() != "bearer" or bearer.strip() != key:
            return "authorization must be 'Bearer <same key as x-roark-api-key>'"
        if key not in self.ctx.api_keys:
            return "invalid or revoked API key"
        return None

    _rec: dict[str, Any] | None = None

    def _flush_log(self, status: int | None) -> None:
        """Log the ingest request before its reply goes out, so a client never outruns the log."""
        rec, self._rec = self._rec, None
        if rec is not None:
            rec.setdefault("status", status)
            with contextlib.suppress(Exception):
                self.ctx.store.log_request(RequestRecord(**rec))

    # -- dispatch -----------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parts.query
        method = "GET" if self.command == "HEAD" else self.command
        if path.startswith("/_dev/"):
            return self._dev(method, path)
        if self.ctx.faults.is_down:
            self._drain(self._length())
            self.close_connection = True
            return None
        if path in (WEBHOOK_PATH, PRESIGN_PATH) or path.startswith(UPLOAD_PREFIX):
            return self._ingest(method, path, query)
        if method != "GET":
            return self._json(405, {"error": f"{method} not allowed on {path}"})
        return self._read(path, query)

    def _ingest(self, method: str, path: str, query: str) -> None:
        endpoint = (
            "webhook" if path == WEBHOOK_PATH else "presign" if path == PRESIGN_PATH else "upload"
        )
        rec: dict[str, Any] = {
            "time": self.ctx.clock(),
            "method": method,
            "path": path,
            "endpoint": endpoint,
        }
        self._rec = rec
        try:
            if self._apply_fault(self.ctx.faults.decide(endpoint), rec, query):
                return
            expected = "PUT" if endpoint == "upload" else "POST"
            if method != expected:
                self._drain(self._length())
                return self._json(405, {"error": f"use {expected} for {path}"})
            if endpoint == "upload":
                return self._upload(path, query, rec)
            body = self._read_body(self.ctx.max_body_bytes)
            self._label(rec, body)
            problem = self._auth_problem()
            if problem is not None:
                raise Rejection(401, problem)
            obj = _validate.parse_object(body)
            if endpoint == "webhook":
                self._webhook(obj, rec)
            else:
                self._presign(obj, rec)
        except Rejection as rej:
            rec["error"] = rej.message
            self._json(rej.status, rej.body())
        finally:
            self._flush_log(None)

    def _webhook(self, obj: dict[str, Any], rec: dict[str, Any]) -> None:
        body = _validate.webhook_body(obj)
        store, now = self.ctx.store, self.ctx.clock()
        if body["event"] == "call-started":
            duplicate = store.record_started(body, now)
        else:
            duplicate = store.record_ended(body, now)
        self._json(
            200,
            {
                "data": {
                    "received": True,
                    "pipecatCallId": body["pipecatCallId"],
                    "duplicate": duplicate,
                }
            },
        )

    def _presign(self, obj: dict[str, Any], rec: dict[str, Any]) -> None:
        req = _validate.chunk_request(obj)
        rec["chunk_index"] = req.chunkIndex
        omit_url, expired = self.ctx.faults.take_presign_faults()
        now = self.ctx.clock()
        ttl = 0.0 if expired else self.ctx.url_ttl_s
        grant, target = self.ctx.signer.issue(
            req.pipecatCallId, req.chunkIndex, expires_ms=math.floor((now + ttl) * 1000)
        )
        data: dict[str, Any] = {
            "uploadUrl": self._origin() + target,
            "s3Key": grant.s3_key,
            "chunkIndex": req.chunkIndex,
            "expiresInSeconds": int(ttl),
            "method": "PUT",
            "contentType": "audio/pcm",
        }
        if omit_url:
            del data["uploadUrl"]
        self._json(200, {"data": data})

    def _origin(self) -> str:
        """Presigned URLs point where the client reached us (works behind port mappings)."""
        host = self.headers.get("host")
        if not host:
            host = f"127.0.0.1:{self.server.server_port}"
        return f"http://{host}"

    def _upload(self, path: str, query: str, rec: dict[str, Any]) -> None:
        n = self._length()
        data: bytes | None = None
        try:
            grant, bad_signature = None, None
            try:
                grant = self.ctx.signer.verify(
                    path, query, now_ms=math.floor(self.ctx.clock() * 1000)
                )
                rec.update(call_id=grant.call_id, chunk_index=grant.chunk_index)
            except PresignError as exc:
                bad_signature = exc
            if self.headers.get("authorization") or self.headers.get("x-roark-api-key"):
                raise PresignError(
                    "InvalidArgument",
                    "Only one auth mechanism allowed; send no authorization or "
                    "x-roark-api-key header with a presigned URL",
                    status=400,
                )
            if bad_signature is not None or grant is None:
                raise bad_signature or PresignError("AccessDenied", "Access Denied")
            if self.headers.get("content-type", "").split(";")[0].strip() != "audio/pcm":
                raise PresignError("SignatureDoesNotMatch", "content-type must be audio/pcm")
            if n is None:
                raise PresignError("MissingContentLength", "content-length required", status=411)
            if n > self.ctx.max_chunk_bytes:
                raise PresignError(
                    "EntityTooLarge",
                    f"chunk of {n} bytes exceeds {self.ctx.max_chunk_bytes} bytes",
                    status=413,
                )
            data = self.rfile.read(n)
            try:
                self.ctx.store.put_chunk(
                    grant.call_id, grant.chunk_index, data, grant.nonce, self.ctx.clock()
                )
            except UrlAlreadyUsed:
                raise PresignError("AccessDenied", "Request has already been used") from None
        except PresignError as exc:
            if data is None:
                self._drain(n)
            rec["error"] = exc.message
            return self._s3_error(exc.status, exc.code, exc.message)
        etag = hashlib.md5(data or b"").hexdigest()
        self._send(200, b"", "text/plain", {"etag": f'"{etag}"'})

    # -- read-back and dev ----------------------------------------------------------------

    def _read(self, path: str, query: str) -> None:
        store = self.ctx.store
        if path == "/":
            return self._html(200, _pages.render_index(store.calls()))
        if path == "/api/calls":
            return self._json(200, {"data": store.calls()})
        if path == "/api/requests":
            call_id = parse_qs(query).get("callId", [None])[0]
            return self._json(200, {"data": store.requests(call_id)})
        if path.startswith("/api/calls/"):
            rest = path.removeprefix("/api/calls/")
            if rest.endswith("/recording.wav"):
                wav = store.wav_bytes(unquote(rest.removesuffix("/recording.wav")))
                if wav is None:
                    return self._json(404, {"error": "no recording"})
                return self._send(200, wav, "audio/wav")
            call = store.call(unquote(rest))
            if call is None:
                return self._json(404, {"error": "no such call"})
            return self._json(200, {"data": call})
        if path.startswith("/calls/"):
            call = store.call(unquote(path.removeprefix("/calls/")))
            if call is None:
                return self._html(404, "<h1>No such call</h1>")
            return self._html(200, _pages.render_call(call))
        return self._json(404, {"error": f"no route for {path}"})

    def _html(self, status: int, text: str) -> None:
        self._send(status, text.encode(), "text/html; charset=utf-8")

    def _dev(self, method: str, path: str) -> None:
        faults = self.ctx.faults
        try:
            if path == "/_dev/faults":
                if method == "DELETE":
                    self._drain(self._length())
                    faults.clear()
                elif method == "POST":
                    try:
                        faults.apply(_validate.parse_object(self._read_body(1 << 20)))
                    except ValueError as exc:
                        raise Rejection(422, f"invalid fault spec: {exc}") from None
                elif method != "GET":
                    raise Rejection(405, f"{method} not allowed on {path}")
                return self._json(200, {"data": faults.snapshot()})
            if path.startswith("/_dev/calls/") and path.endswith("/trace") and method == "POST":
                call_id = unquote(path.removeprefix("/_dev/calls/").removesuffix("/trace"))
                obj = _validate.parse_object(self._read_body(1 << 20))
                trace_id, jaeger = obj.get("traceId"), obj.get("jaegerUrl", _DEFAULT_JAEGER)
                if not isinstance(trace_id, str) or not trace_id:
                    raise Rejection(422, "traceId must be a non-empty string")
                if not isinstance(jaeger, str) or not jaeger.startswith(("http://", "https://")):
                    raise Rejection(422, "jaegerUrl must be an http(s) URL")
                self.ctx.store.set_trace(call_id, trace_id, jaeger, self.ctx.clock())
                return self._json(200, {"data": {"traceId": trace_id, "jaegerUrl": jaeger}})
            raise Rejection(404, f"no route for {method} {path}")
        except Rejection as rej:
            self._json(rej.status, rej.body())


def _retry_after(seconds: float, as_date: bool, now: float) -> str:
    """Retry-After in either RFC 9110 form; fractional seconds are sent as written."""
    if as_date:
        return formatdate(now + seconds, usegmt=True)
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))
