"""Per-call delivery locks: exclusive, non-blocking, across threads and processes."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Final, Literal

if sys.platform != "win32":
    import fcntl

    HAVE_FLOCK: Final = True

    def _flock_nb(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

else:  # pragma: no cover - Windows: O_EXCL lock files instead
    HAVE_FLOCK: Final = False

    def _flock_nb(fd: int) -> None:
        raise OSError("flock is not available on this platform")


LockMode = Literal["auto", "flock", "excl"]


class CallLock:
    """One held call lock; release it exactly once (``with`` does)."""

    def __init__(self, path: str, fd: int | None, mode: Literal["flock", "excl"]) -> None:
        self._path = path
        self._fd = fd
        self._mode = mode
        self._released = False

    def touch(self) -> None:
        """Keep an O_EXCL lock from looking stale during a long session."""
        if self._mode == "excl":
            with contextlib.suppress(OSError):
                os.utime(self._path)

    def release(self) -> None:
        """Unlink while still held, so lock files never pile up; waiters re-check the inode."""
        if self._released:
            return
        self._released = True
        with contextlib.suppress(OSError):
            os.unlink(self._path)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> CallLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def resolve_mode(mode: LockMode) -> Literal["flock", "excl"]:
    if mode == "auto":
        return "flock" if HAVE_FLOCK else "excl"
    if mode == "flock" and not HAVE_FLOCK:  # pragma: no cover - Windows
        raise ValueError("lock_mode='flock' needs fcntl")
    return mode


def try_lock(
    path: str | Path, mode: Literal["flock", "excl"], *, stale_after: float
) -> CallLock | None:
    """The lock at ``path``, or ``None`` if another thread or process holds it."""
    if mode == "flock":
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            _flock_nb(fd)
        except OSError:
            os.close(fd)
            return None
        try:  # the holder before us may have unlinked it: then ours is a stale inode
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return None
        return CallLock(os.fspath(path), fd, "flock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        try:
            age = time.time() - os.stat(path).st_mtime
        except FileNotFoundError:
            return None
        if age > stale_after:  # its holder died; the next try takes it
            with contextlib.suppress(OSError):
                os.unlink(path)
        return None
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return CallLock(os.fspath(path), None, "excl")
