"""One outbox + delivery per destination per process, shared by the exporter and the recorder.

Sharing is what keeps per-call order across both writers: call-started from the
span exporter and chunks from the audio recorder land in the same call directory
and leave through the same delivery thread.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import httpx

from ..audio._chunks import PCM
from ..config import ENV_SPOOL_DIR, RoarkSettings
from ._client import RoarkClient
from ._delivery import Delivery, DeliveryOptions
from ._outbox import Outbox, call_key
from ._translate import Item

ATEXIT_FLUSH_S: Final = 2.0

_EngineKey = tuple[str, str, str]


class Engine:
    """The outbox and its delivery for one (spool dir, Roark, key)."""

    # Recorder chunks are kept as handed over (a read-only buffer) until persisted.
    takes_buffers = True

    def __init__(
        self,
        settings: RoarkSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        options: DeliveryOptions | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self.settings = settings
        self.options = options or DeliveryOptions()
        self.outbox = outbox or Outbox(settings.spool_dir)
        timeout = self.options.request_timeout
        self.delivery = Delivery(
            self.outbox,
            lambda: RoarkClient(settings, transport=transport, timeout=timeout),
            options=self.options,
            clock=clock,
            rng=rng,
        )
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def put_started(self, call_id: str, payload: dict[str, Any]) -> None:
        self.outbox.put_started(call_id, payload)
        self.delivery.notify(call_key(call_id))

    def put_segment(self, call_id: str, index: int, record: dict[str, Any]) -> None:
        self.outbox.put_segment(call_id, index, record)
        self.delivery.notify(call_key(call_id))

    def put_end(self, call_id: str, end: dict[str, Any]) -> None:
        self.delivery.persist_call(call_id)  # its audio is durable before its end is
        self.outbox.put_end(call_id, end)
        self.delivery.notify(call_key(call_id))

    def put_item(self, item: Item) -> None:
        """One translated span's item; OSError if the outbox cannot store it."""
        if item.kind == "started":
            self.put_started(item.call_id, item.body)
        elif item.kind == "segment":
            self.put_segment(item.call_id, item.index, item.body)
        else:
            self.put_end(item.call_id, item.body)

    def put_chunk(
        self,
        call_id: str,
        index: int,
        pcm: bytes,
        *,
        sample_rate: int | None = None,
        num_channels: int | None = None,
    ) -> None:
        """On disk before it returns (the bridge answers only then); OSError if it cannot be."""
        self.outbox.put_chunk(
            call_id, index, pcm, sample_rate=sample_rate, num_channels=num_channels
        )
        self.delivery.notify(call_key(call_id))

    def submit_chunk(
        self,
        call_id: str,
        index: int,
        pcm: PCM,
        *,
        sample_rate: int | None = None,
        num_channels: int | None = None,
    ) -> bool:
        """From the event loop: memory, or the disk when memory is full; False if neither."""
        return self.delivery.submit_chunk(
            call_id, index, pcm, sample_rate=sample_rate, num_channels=num_channels
        )

    def reject(self, call_id: str | None, exc: ValueError) -> None:
        """A span whose record is out of range: counted and logged, never written."""
        self.delivery.reject(call_id, exc)

    def start(self) -> None:
        """Deliver what earlier processes left in the spool, without waiting for new work."""
        self.delivery.notify()

    def force_flush(self, timeout: float) -> bool:
        return self.delivery.force_flush(timeout)

    def shutdown(self, timeout: float) -> None:
        """Final: later ``engine_for`` calls get a fresh engine on the same spool."""
        self._closed = True
        _forget(self)
        self.delivery.shutdown(timeout)

    def stats(self) -> dict[str, Any]:
        return self.delivery.stats()


# Guards _engines: exporters and recorders are created on any thread.
_lock = threading.Lock()
_engines: dict[_EngineKey, Engine] = {}


def _key(settings: RoarkSettings) -> _EngineKey:
    digest = hashlib.sha256(settings.api_key.encode()).hexdigest()[:16]
    return (str(settings.spool_dir.expanduser().absolute()), settings.base_url, digest)


def engine_for(
    settings: RoarkSettings,
    *,
    transport: httpx.BaseTransport | None = None,
    options: DeliveryOptions | None = None,
) -> Engine:
    """The process's engine for these settings; the first caller's transport/options win."""
    key = _key(settings)
    with _lock:
        for other, live in _engines.items():
            if other[0] == key[0] and other != key and not live.closed:
                # One outbox delivers everything in it with one key: two workspaces must not mix.
                raise ValueError(
                    f"spool_dir {key[0]} is already used by another Roark destination "
                    f"({other[1]}) in this process: give each workspace its own spool_dir "
                    f"(or {ENV_SPOOL_DIR} per process)"
                )
        engine = _engines.get(key)
        if engine is None or engine.closed:
            engine = Engine(settings, transport=transport, options=options)
            _engines[key] = engine
    engine.start()
    return engine


def _forget(engine: Engine) -> None:
    with _lock:
        for k, v in list(_engines.items()):
            if v is engine:
                del _engines[k]


def _shutdown_all() -> None:
    """Best effort at exit: a short deadline for all, the rest stays on disk for next time."""
    with _lock:
        engines = list(_engines.values())
    deadline = time.monotonic() + ATEXIT_FLUSH_S
    for engine in engines:
        engine.shutdown(max(0.0, deadline - time.monotonic()))


def _reinit_lock_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at fork time


atexit.register(_shutdown_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_lock_in_child)
