"""The bridge process: both receivers over one ingest, started and drained together."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Final

import grpc
from aiohttp import web

from ..exporter._engine import Engine
from . import _grpc, _http
from ._auth import BearerAuth, TLSFiles, check_exposure
from ._ingest import Ingest

MAX_BODY_BYTES: Final = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """Where and how the bridge listens. Port 0 picks a free port; None turns that side off."""

    host: str = "127.0.0.1"
    grpc_port: int | None = 4317
    http_port: int | None = 4318
    token: str | None = None
    tls: TLSFiles | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    read_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    drain_timeout: float = 10.0

    def __repr__(self) -> str:  # never the token
        return (
            f"BridgeConfig(host={self.host!r}, grpc_port={self.grpc_port}, "
            f"http_port={self.http_port}, token={'set' if self.token else None}, "
            f"tls={self.tls is not None})"
        )


class RoarkBridge:
    """OTLP/gRPC and OTLP/HTTP in, the Roark outbox out; answers only once data is on disk."""

    def __init__(self, engine: Engine, config: BridgeConfig | None = None) -> None:
        self.config = config or BridgeConfig()
        if self.config.max_body_bytes <= 0 or self.config.read_timeout <= 0:
            raise ValueError("bridge max_body_bytes and read_timeout must be positive")
        self.auth = BearerAuth(self.config.token)
        check_exposure(self.config.host, self.auth, self.config.tls)
        self._ssl = self.config.tls.server_context() if self.config.tls else None
        self.ingest = Ingest(engine)
        self.grpc_port: int | None = None
        self.http_port: int | None = None
        self._grpc: grpc.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def grpc_endpoint(self) -> str:
        return f"{self.config.host}:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        scheme = "https" if self.config.tls else "http"
        return f"{scheme}://{self.config.host}:{self.http_port}"

    def start(self) -> RoarkBridge:
        """Listen on both sides; returns once the ports are bound."""
        c = self.config
        if c.grpc_port is not None:
            self._grpc, self.grpc_port = _grpc.make_server(
                self.ingest,
                self.auth,
                host=c.host,
                port=c.grpc_port,
                max_message_bytes=c.max_body_bytes,
                tls=c.tls,
            )
            self._grpc.start()
        if c.http_port is not None:
            ready = threading.Event()
            failure: list[BaseException] = []
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._serve_http,
                args=(ready, failure),
                name="roark-bridge-http",
                daemon=True,
            )
            self._thread.start()
            ready.wait()
            if failure:
                self.stop()
                raise failure[0]
        return self

    def _serve_http(self, ready: threading.Event, failure: list[BaseException]) -> None:
        assert self._loop is not None
        loop = self._loop
        asyncio.set_event_loop(loop)
        c = self.config
        try:
            app = _http.make_app(
                self.ingest, self.auth, _http.Limits(c.max_body_bytes, c.read_timeout)
            )
            self._runner = web.AppRunner(
                app,
                access_log=None,
                auto_decompress=False,  # we decompress, bounded
                keepalive_timeout=c.keepalive_timeout,
                shutdown_timeout=c.drain_timeout,
            )
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, c.host, c.http_port, ssl_context=self._ssl)
            loop.run_until_complete(site.start())
            self.http_port = self._runner.addresses[0][1]
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def stop(self) -> None:
        """Drain: stop taking requests, let those in flight reach the outbox, then return."""
        self.ingest.close()
        if self._grpc is not None:
            self._grpc.stop(self.config.drain_timeout).wait()
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._thread = None
