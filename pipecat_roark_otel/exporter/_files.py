"""Small file helpers of the outbox: atomic writes, appends, private folders.

Plain ``os`` calls rather than ``open()``: a buffered file object costs an fstat, an
isatty ioctl and lseeks per open, and each system call lets another delivery thread take
the GIL; delivery opens several files per call.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeAlias

from ._state import SentLog

TMP_PREFIX: Final = ".tmp-"
_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_BINARY: Final = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
_READ: Final = os.O_RDONLY | _CLOEXEC | _BINARY
_FILE_MODE: Final = 0o666  # as open() makes them, less the umask; the folders are private

StrPath: TypeAlias = "str | os.PathLike[str]"


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def tmp_name(path: StrPath) -> str:
    """Where ``path`` is written before it is renamed into place (same folder)."""
    head, name = os.path.split(os.fspath(path))
    return os.path.join(head, f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}-{name}")


def _write_tmp(tmp: str, data: bytes | memoryview) -> None:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC | _BINARY, _FILE_MODE)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def write_atomic(path: StrPath, data: bytes | memoryview) -> None:
    tmp = tmp_name(path)
    try:
        _write_tmp(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_new(path: StrPath, data: bytes | memoryview) -> None:
    """``write_atomic`` that never replaces: a file already at ``path`` stays as it is."""
    tmp = tmp_name(path)
    try:
        _write_tmp(tmp, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def write_over(old: StrPath, path: StrPath, data: bytes | memoryview) -> bool:
    """``write_atomic`` into the file ``old`` (moved, then overwritten): no new inode.
    False, with nothing written, if ``old`` is gone; ``FileNotFoundError``, with ``old``
    left where it is, if ``path``'s folder is gone (as ``write_atomic`` would)."""
    tmp = tmp_name(path)
    try:
        os.replace(old, tmp)
    except FileNotFoundError:
        if os.path.lexists(old):
            raise
        return False
    try:
        # No O_TRUNC: ext4 flushes a file truncated to zero when it is closed (auto_da_alloc).
        fd = os.open(tmp, os.O_WRONLY | _CLOEXEC | _BINARY)
        try:
            write_all(fd, data)
            os.ftruncate(fd, len(data))  # what ``old`` held may have been longer
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


def append_line(path: StrPath, data: bytes | memoryview) -> None:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _CLOEXEC | _BINARY
    fd = os.open(path, flags, _FILE_MODE)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def touch_new(path: StrPath) -> None:
    """Create an empty file (or leave one that exists): a marker needs no tmp and rename."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | _CLOEXEC | _BINARY, _FILE_MODE))


def read_bytes(path: StrPath) -> bytes:
    fd = os.open(path, _READ)
    try:
        parts = []
        while part := os.read(fd, 1 << 20):
            parts.append(part)
    finally:
        os.close(fd)
    return parts[0] if len(parts) == 1 else b"".join(parts)  # b"" when empty


def ends_in_newline(path: StrPath) -> bool:
    """Whether the file's last byte is a newline (False when empty); reads only that byte."""
    fd = os.open(path, _READ)
    try:
        os.lseek(fd, -1, os.SEEK_END)
        return os.read(fd, 1) == b"\n"
    except OSError:  # empty: no last byte to seek to
        return False
    finally:
        os.close(fd)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def read_json(path: StrPath) -> Any:
    return json.loads(read_bytes(path))


def read_log(path: StrPath) -> SentLog:
    try:
        return SentLog.parse(read_bytes(path))
    except FileNotFoundError:
        return SentLog(frozenset(), frozenset())


@dataclass(frozen=True, slots=True)
class CallFile:
    """A call's ``call.json``: its identity line, then (since the sent log moved in) the
    sent log's lines. ``log`` is None for a file from before: identity only, no newline."""

    call_id: str | None
    head: bytes  # the identity line as stored
    log: SentLog | None


def call_file_bytes(call_id: str) -> bytes:
    return dumps({"callId": call_id}) + b"\n"


def read_call_file(path: StrPath) -> CallFile:
    head, newline, rest = read_bytes(path).partition(b"\n")
    try:
        value = json.loads(head).get("callId")
    except (ValueError, AttributeError):
        value = None
    call_id = value if isinstance(value, str) and value else None
    return CallFile(call_id, head, SentLog.parse(rest) if newline else None)


def mkdir_private(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
