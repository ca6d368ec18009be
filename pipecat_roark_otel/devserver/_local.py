"""LocalRoark: the in-process handle that starts the server and reads its state back."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from ._app import AppServer, ServerContext
from ._faults import Faults
from ._presign import Signer
from ._store import Store

DEFAULT_API_KEY = "rk_test_local"
MAX_BODY_BYTES = 20 * 1024 * 1024
MAX_CHUNK_BYTES = 16 * 1024 * 1024


class LocalRoark:
    """A strict, persistent local Roark ingestion server with switchable faults.

    ``data_dir`` defaults to a fresh temp dir (kept after ``stop()`` so recordings
    stay readable). Reads work before ``start()`` and after ``stop()``.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        api_key: str = DEFAULT_API_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        url_ttl_s: float = 300.0,
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_chunk_bytes: int = MAX_CHUNK_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not api_key:
            raise ValueError("api_key must be a non-empty string")
        if url_ttl_s <= 0:
            raise ValueError(f"url_ttl_s must be > 0, got {url_ttl_s}")
        self.data_dir = Path(
            data_dir if data_dir is not None else tempfile.mkdtemp(prefix="local-roark-")
        )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.host, self._port = host, port
        self.faults = Faults()
        self._store = Store(self.data_dir)
        self._ctx = ServerContext(
            store=self._store,
            faults=self.faults,
            signer=Signer(self._store.secret),
            api_keys=frozenset((api_key,)),
            url_ttl_s=url_ttl_s,
            max_body_bytes=max_body_bytes,
            max_chunk_bytes=max_chunk_bytes,
            clock=clock,
        )
        self._api_key = api_key
        # Guards _server: start() and stop() may race from test fixtures.
        self._lock = threading.Lock()
        self._server: AppServer | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> LocalRoark:
        """Bind and serve on a daemon thread; idempotent."""
        with self._lock:
            if self._server is None:
                server = AppServer(self._ctx, self.host, self._port)
                server.start()
                self._port = server.port
                self._server = server
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting, close live connections, wait up to ``timeout`` for handlers."""
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.stop(timeout)
            self._store.close()

    def __enter__(self) -> LocalRoark:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def base_url(self) -> str:
        """``http://host:port`` for clients (``base_url=`` / ``ROARK_BASE_URL``)."""
        if self._port == 0:
            raise RuntimeError("LocalRoark has no port yet: call start() first")
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    # -- keys ---------------------------------------------------------------------------

    @property
    def api_key(self) -> str:
        """The first currently valid key."""
        return self._api_key

    def set_api_keys(self, keys: Iterable[str]) -> None:
        """Replace the valid keys; requests with any other key get 401 from now on."""
        new = list(keys)
        if not new or not all(isinstance(k, str) and k for k in new):
            raise ValueError("set_api_keys needs at least one non-empty string key")
        self._ctx.api_keys = frozenset(new)
        self._api_key = new[0]

    # -- read-back ----------------------------------------------------------------------

    def calls(self) -> list[dict[str, Any]]:
        """Summaries of every call, newest first."""
        return self._store.calls()

    def call(self, call_id: str) -> dict[str, Any] | None:
        """The full record of one call, or None if nothing about it was received."""
        return self._store.call(call_id)

    def wav_bytes(self, call_id: str) -> bytes | None:
        return self._store.wav_bytes(call_id)

    def requests(self, call_id: str | None = None) -> list[dict[str, Any]]:
        """Every ingest request (webhook, presign, upload), including rejected and faulted."""
        return self._store.requests(call_id)

    def wait_for_call_ended(self, call_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """Poll until ``call-ended`` for ``call_id`` is stored; TimeoutError says what arrived."""
        deadline = time.monotonic() + timeout
        while True:
            call = self._store.call(call_id)
            if call is not None and call["ended"] is not None:
                return call
            if time.monotonic() >= deadline:
                raise TimeoutError(self._not_ended(call_id, call, timeout))
            time.sleep(0.02)

    def _not_ended(self, call_id: str, call: dict[str, Any] | None, timeout: float) -> str:
        reqs = self._store.requests(call_id)
        tail = ", ".join(
            f"{r['method']} {r['endpoint']}{'/' + r['event'] if r['event'] else ''}"
            f"{'#' + str(r['chunkIndex']) if r['chunkIndex'] is not None else ''}"
            f"->{r['status'] if r['status'] is not None else 'dropped'}"
            for r in reqs[-8:]
        )
        if call is None:
            state = "nothing received for it"
        else:
            state = f"status={call['status']}, chunks={sorted(call['chunks'])}"
        known = [c["pipecatCallId"] for c in self._store.calls()[:5]]
        return (
            f"call-ended for {call_id!r} not received within {timeout}s: {state}; "
            f"{len(reqs)} requests for it (last: {tail or 'none'}); recent calls: {known}"
        )
