"""Delivered chunk files, kept for the next chunks to be written into.

Every chunk used to be a new file, unlinked once delivered. A new file costs the
filesystem an inode, and on ext4 without a journal finding one means skipping every
inode freed in the last minutes: with many calls, the spool's own churn made each new
chunk file dearer. A delivered chunk's file is set aside instead, and a later chunk is
written over it (``write_over``: the same tmp + rename, no new inode). Only this
process's own spares are reused; ``Outbox.recover`` removes those others left.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import threading
from typing import Final

from ._files import StrPath, write_atomic, write_over

KEPT: Final = 64  # 16 MiB of disk at 256 KiB chunks


class Spares:
    """Thread-safe."""

    def __init__(self, folder: str) -> None:
        self._folder = folder
        self._lock = threading.Lock()  # guards _kept
        self._kept: list[str] = []
        self._names = itertools.count()
        self._tag = secrets.token_hex(4)

    def keep(self, path: str) -> None:
        """Set a delivered chunk's file aside, or unlink it when enough are kept."""
        with self._lock:
            room = len(self._kept) < KEPT
        if room:
            spare = f"{self._folder}/{self._prefix()}{next(self._names)}"
            for _ in range(2):
                try:
                    os.replace(path, spare)
                except FileNotFoundError:  # no folder yet (or someone removed it)
                    with contextlib.suppress(OSError):
                        os.mkdir(self._folder, 0o700)
                    continue
                except OSError:  # not a folder, not writable: the file just goes
                    break
                with self._lock:
                    self._kept.append(spare)
                return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def sweep(self) -> None:
        """Remove the spare files other processes left (a live one's are then only not reused)."""
        mine = self._prefix()
        with contextlib.suppress(OSError):
            for e in os.scandir(self._folder):
                if not e.name.startswith(mine):
                    with contextlib.suppress(OSError):
                        os.unlink(e.path)

    def _prefix(self) -> str:
        return f"{os.getpid()}-{self._tag}-"

    def clear(self) -> None:
        with self._lock:
            kept, self._kept = self._kept, []
        for spare in kept:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spare)

    def write(self, path: StrPath, data: bytes | memoryview) -> None:
        """``write_atomic``, over a kept file when there is one."""
        while True:
            with self._lock:
                spare = self._kept.pop() if self._kept else None
            if spare is None:
                write_atomic(path, data)
                return
            try:
                if write_over(spare, path, data):
                    return
            except FileNotFoundError:  # the target's folder, retired under us: spare kept
                with self._lock:
                    self._kept.append(spare)
                raise
