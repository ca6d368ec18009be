"""The audio hand-off: chunks wait in bounded memory until a delivery thread writes them.

When the memory is full (a busy host, a slow disk) the chunk is written on the
caller's thread instead (~1 ms for a 0.5 MB chunk): never dropped while the
process lives. Only a failing disk loses a chunk, and that loss is counted here, once.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from .. import _errors
from ..audio._chunks import Chunk
from . import _stats
from ._outbox import Outbox, call_key

logger = _errors.logger


class Handoff:
    """``submit`` from any thread; ``persist_*`` from delivery threads (or at a call's end)."""

    def __init__(
        self, outbox: Outbox, stats: _stats.Stats, limit: int, stored: Callable[[str], None]
    ) -> None:
        self._outbox = outbox
        self._stats = stats
        self._limit = limit
        self._stored = stored  # told each call key whose chunk reached the disk
        self._lock = threading.Lock()  # guards the queue, its byte count and _memory
        # Held while an item is written: whoever holds it knows no write is half done.
        # Taken before _lock, never while holding it.
        self._persist_lock = threading.Lock()
        self._queue: deque[Chunk] = deque()
        self._bytes = 0  # includes the item being written (durable only when done)
        self._memory = True  # False after shutdown: every chunk goes straight to disk
        self.spilled = 0  # written on the caller's thread because memory was full

    def submit(self, chunk: Chunk) -> bool:
        """False only when the chunk could not be stored at all (counted, logged)."""
        with self._lock:
            if self._memory and self._bytes + len(chunk.pcm) <= self._limit:
                self._queue.append(chunk)
                self._bytes += len(chunk.pcm)
                return True
            self.spilled += 1
        return self._write(chunk)

    def close_memory(self) -> None:
        with self._lock:
            self._memory = False

    def empty(self) -> bool:
        with self._lock:
            return not self._bytes

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "handoff_bytes": self._bytes,
                "handoff_items": len(self._queue),
                "handoff_spilled": self.spilled,
            }

    def persist_one(self) -> bool:
        with self._persist_lock:
            with self._lock:
                if not self._queue:
                    return False
                chunk = self._queue.popleft()
            self._persist(chunk)
        return True

    def persist_call(self, call_id: str) -> None:
        """Write the call's waiting audio now, on the caller's thread.

        Called before its end record is written: call-ended on disk must imply its audio is
        too, or a process killed right after would leave a call whose chunks never arrive.
        """
        with self._persist_lock:
            with self._lock:
                mine = [c for c in self._queue if c.call_id == call_id]
                if not mine:
                    return
                self._queue = deque(c for c in self._queue if c.call_id != call_id)
            for chunk in mine:
                self._persist(chunk)

    def _persist(self, chunk: Chunk) -> None:
        try:
            self._write(chunk)
        finally:
            with self._lock:
                self._bytes -= len(chunk.pcm)

    def _write(self, chunk: Chunk) -> bool:
        try:
            self._outbox.put_chunk(
                chunk.call_id,
                chunk.index,
                chunk.pcm,
                sample_rate=chunk.sample_rate,
                num_channels=chunk.num_channels,
            )
        except OSError as exc:  # disk full, permissions: the chunk is lost, the call goes on
            self._stats.lost(_stats.AUDIO_DISK_ERROR)
            if _errors.should_log(_stats.AUDIO_DISK_ERROR):
                logger.warning(
                    "Roark outbox could not store audio chunk %d of call %s: %s",
                    chunk.index,
                    chunk.call_id,
                    exc.strerror,
                )
            return False
        finally:  # marked before the bytes are released, so no flush sees a false idle
            self._stored(call_key(chunk.call_id))
        return True
