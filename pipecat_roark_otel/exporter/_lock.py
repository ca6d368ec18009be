"""Per-call delivery locks: exclusive, non-blocking, across threads and processes.

Where ``flock`` is available a call is locked by flock on its own folder: nothing is
created or removed per lock (a new file costs an inode, slow on a busy ext4 without a
journal). A filesystem that cannot flock a folder falls back to a lock file per call, as
does ``excl`` mode (O_EXCL lock files, for platforms without flock). So does a network
filesystem: Linux's NFS client has no flock for folders, so one succeeds but only locks
this host, where a lock file's flock reaches the server (its byte-range emulation) and
excludes the other hosts sharing the spool.
"""

from __future__ import annotations

import contextlib
import errno
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
_Held = Literal["flock", "excl", "folder"]
_FOLDER: Final = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_BUSY: Final = frozenset({errno.EAGAIN, errno.EWOULDBLOCK})


class FolderLockUnsupported(Exception):
    """This filesystem cannot flock a folder: use lock files."""


class CallLock:
    """One held call lock; release it exactly once (``with`` does)."""

    def __init__(self, path: str, fd: int | None, mode: _Held) -> None:
        self._path = path
        self._fd = fd
        self._mode = mode
        self._released = False
        if fd is not None:
            _held[fd] = self

    def touch(self) -> None:
        """Keep an O_EXCL lock from looking stale during a long session."""
        if self._mode == "excl":
            with contextlib.suppress(OSError):
                os.utime(self._path)

    def release(self) -> None:
        """Unlink a lock file while still held, so lock files never pile up; waiters re-check
        the inode. A folder lock just lets go."""
        if self._released:
            return
        self._released = True
        if self._mode != "folder":
            with contextlib.suppress(OSError):
                os.unlink(self._path)
        if self._fd is not None:
            _held.pop(self._fd, None)
            os.close(self._fd)
            self._fd = None

    def _drop_inherited(self) -> None:
        """In a forked child: close our copy of the parent's descriptor, unlocking nothing."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        self._released = True

    def __enter__(self) -> CallLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# The locks this process holds by descriptor. A child forked meanwhile (multiprocessing's
# "fork", a pre-forking server) shares each one's open file description, and a flock lasts
# until every copy is closed: a long-lived child would keep the call locked after the
# parent lets go (a folder is never unlinked and remade as a lock file is).
_held: dict[int, CallLock] = {}


def _close_inherited() -> None:
    for lock in list(_held.values()):
        lock._drop_inherited()
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited)


def resolve_mode(mode: LockMode) -> Literal["flock", "excl"]:
    if mode == "auto":
        return "flock" if HAVE_FLOCK else "excl"
    if mode == "flock" and not HAVE_FLOCK:  # pragma: no cover - Windows
        raise ValueError("lock_mode='flock' needs fcntl")
    return mode


def _still_there(path: str | Path, fd: int) -> bool:
    """Whether ``path`` still names the inode we locked through ``fd``; closes ``fd`` if not
    (a lock on a stale inode excludes nobody)."""
    try:
        same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
    return same


# Filesystems shared between hosts: a folder's flock there excludes only this host.
_NETWORK_FS: Final = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "9p", "afs", "lustre", "gpfs", "glusterfs"}
)
_MOUNTINFO = "/proc/self/mountinfo"
_network_parents: dict[str, bool] = {}  # a call folder's parent -> on a network filesystem


def fs_type(dev: int) -> str | None:
    """The filesystem type of device ``dev`` (``st_dev``) from the mount table; None where
    there is none to read (not Linux)."""
    want = f"{os.major(dev)}:{os.minor(dev)}".encode()
    try:
        with open(_MOUNTINFO, "rb") as table:
            for line in table:
                fields = line.split()
                if len(fields) > 2 and fields[2] == want and b"-" in fields:
                    return fields[fields.index(b"-") + 1].decode(errors="replace")
    except (OSError, IndexError):
        return None
    return None


def _on_network_fs(folder: str) -> bool:
    parent = os.path.dirname(folder)
    known = _network_parents.get(parent)
    if known is None:
        kind = fs_type(os.stat(parent).st_dev) or ""
        known = kind in _NETWORK_FS or kind.startswith("fuse.")
        _network_parents[parent] = known
    return known


def lock_folder(path: str) -> CallLock | None:
    """flock on the folder at ``path``, or ``None`` if another thread or process holds it
    (or the folder was retired meanwhile). Raises ``FileNotFoundError`` if there is no
    folder, :class:`FolderLockUnsupported` if its filesystem cannot lock it (for every
    host sharing it)."""
    if _on_network_fs(path):
        raise FolderLockUnsupported(f"{os.path.dirname(path)} is on a network filesystem")
    fd = os.open(path, _FOLDER)
    try:
        _flock_nb(fd)
    except OSError as exc:
        os.close(fd)
        if exc.errno in _BUSY:
            return None
        raise FolderLockUnsupported(str(exc)) from None
    if not _still_there(path, fd):  # retired (renamed away) and made again since we opened it
        return None
    return CallLock(path, fd, "folder")


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
        if not _still_there(path, fd):  # the holder before us unlinked it
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
