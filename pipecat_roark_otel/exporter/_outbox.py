"""The durable per-call outbox: one directory per call, atomic files, an append-only sent log.

Layout (``root/v1``)::

    calls/<key>/call.json        {"callId": raw id}; <key> = sha256(call id)[:32]
    calls/<key>/started.json     call-started wire dict
    calls/<key>/seg-000000.json  segment records
    calls/<key>/chunk-000000.pcm raw PCM (deleted once delivered)
    calls/<key>/audio.json       optional {"sampleRate", "numChannels"}
    calls/<key>/end.json         {"segments", "chunks", "payload"}
    calls/<key>/sent.log         "started", "chunk 3", "ended", "dead chunk 4", one per line
    locks/<key>.lock             per-call delivery lock
    dead/<key>/...               dead-lettered item files + reason.json (+ sent.log)
    done/<key>                   tombstone of a completed call: late duplicates are ignored

Writes are atomic (tmp + ``os.replace``) but not fsynced: we guard against the
process dying, not the OS crashing. Only the holder of a call's lock appends to
its ``sent.log`` or removes its files; writers may run in any thread or process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

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

LAYOUT: Final = "v1"
STARTED: Final = "started"
ENDED: Final = "ended"
DEAD_PREFIX: Final = "dead "
_TMP_PREFIX: Final = ".tmp-"
_STALE_TMP_S: Final = 600.0
_TOMBSTONE_TTL_S: Final = 7 * 24 * 3600.0
_REASON_MAX: Final = 500


def call_key(call_id: str) -> str:
    """The directory name of a call: the raw id never appears in a path."""
    return hashlib.sha256(call_id.encode()).hexdigest()[:32]


def chunk_item(index: int) -> str:
    return f"chunk {index}"


def segment_item(index: int) -> str:
    return f"segment {index}"


def _item_file(item: str) -> str:
    if item == STARTED:
        return "started.json"
    if item == ENDED:
        return "end.json"
    kind, _, num = item.partition(" ")
    if kind == "chunk":
        return f"chunk-{int(num):06d}.pcm"
    if kind == "segment":
        return f"seg-{int(num):06d}.json"
    raise ValueError(f"unknown outbox item {item!r}")


def _file_item(name: str) -> str | None:
    if name == "started.json":
        return STARTED
    if name == "end.json":
        return ENDED
    stem, dot, ext = name.partition(".")
    if stem.startswith("chunk-") and ext == "pcm" and stem[6:].isdigit():
        return chunk_item(int(stem[6:]))
    if stem.startswith("seg-") and ext == "json" and stem[4:].isdigit():
        return segment_item(int(stem[4:]))
    del dot
    return None


@dataclass(frozen=True, slots=True)
class CallState:
    """A snapshot of one call's directory, read under its lock."""

    key: str
    call_id: str | None
    started: bool
    segments: frozenset[int]
    chunks: frozenset[int]
    end: bool
    end_mtime: float | None
    sent: frozenset[str]
    dead: frozenset[str]
    last_activity: float

    def done(self, item: str) -> bool:
        """Delivered or dead-lettered: either way nothing more to do for it."""
        return item in self.sent or item in self.dead


class CallLock:
    """An exclusive, non-blocking per-call lock across threads and processes."""

    def __init__(self, path: Path, fd: int | None, mode: Literal["flock", "excl"]) -> None:
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
            self._path.unlink()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> CallLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}-{path.name}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _read_json(path: Path) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read())


def _read_lines(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []


def _mkdir_private(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


class Outbox:
    """Durable per-call FIFO on disk, shared safely by threads and processes."""

    def __init__(
        self, root: Path, *, lock_mode: LockMode = "auto", stale_lock_after: float = 300.0
    ) -> None:
        self.root = Path(root)
        if lock_mode == "auto":
            lock_mode = "flock" if HAVE_FLOCK else "excl"
        if lock_mode == "flock" and not HAVE_FLOCK:  # pragma: no cover - Windows
            raise ValueError("lock_mode='flock' needs fcntl")
        self._lock_mode: Literal["flock", "excl"] = lock_mode
        self._stale_lock_after = stale_lock_after
        _mkdir_private(self.root)
        with contextlib.suppress(OSError):
            if self.root.stat().st_uid == os.getuid():
                os.chmod(self.root, 0o700)
        base = self.root / LAYOUT
        self.calls_dir = base / "calls"
        self.dead_dir = base / "dead"
        self.done_dir = base / "done"
        self.locks_dir = base / "locks"
        self.trash_dir = base / "trash"
        for d in (base, self.calls_dir, self.dead_dir, self.done_dir, self.locks_dir):
            _mkdir_private(d)

    # -- writing (any thread, any process) -------------------------------------------------

    def put_started(self, call_id: str, payload: dict[str, Any]) -> bool:
        return self._put(call_id, STARTED, _dumps(payload))

    def put_segment(self, call_id: str, index: int, record: dict[str, Any]) -> bool:
        return self._put(call_id, segment_item(index), _dumps(record))

    def put_end(self, call_id: str, end: dict[str, Any]) -> bool:
        return self._put(call_id, ENDED, _dumps(end))

    def put_chunk(
        self,
        call_id: str,
        index: int,
        pcm: bytes,
        *,
        sample_rate: int | None = None,
        num_channels: int | None = None,
    ) -> bool:
        """Store one chunk; the optional format lets an orphaned call still end with its audio."""
        if sample_rate is not None and num_channels is not None:
            meta = {"sampleRate": sample_rate, "numChannels": num_channels}
            self._put(call_id, "audio", _dumps(meta), filename="audio.json")
        return self._put(call_id, chunk_item(index), pcm)

    def _put(self, call_id: str, item: str, data: bytes, *, filename: str | None = None) -> bool:
        """Write one item unless it is already there or already delivered. True if written."""
        if not call_id:
            raise ValueError("call id must be a non-empty string")
        key = call_key(call_id)
        if (self.done_dir / key).exists():
            return False
        d = self.calls_dir / key
        target = d / (filename or _item_file(item))
        for _ in range(3):  # the lock holder may be retiring the directory under us
            if target.exists():
                return False
            if filename is None and item in _read_lines(d / "sent.log"):
                return False
            try:
                _mkdir_private(d)
                if not (d / "call.json").exists():
                    _write_atomic(d / "call.json", _dumps({"callId": call_id}))
                _write_atomic(target, data)
                return True
            except FileNotFoundError:
                if (self.done_dir / key).exists():
                    return False
        return False

    # -- reading ---------------------------------------------------------------------------

    def pending_keys(self) -> list[str]:
        """Keys of calls with anything left on disk (including those of other processes)."""
        try:
            return sorted(e.name for e in os.scandir(self.calls_dir) if e.is_dir())
        except FileNotFoundError:
            return []

    def signature(self, key: str) -> int | None:
        """Changes whenever a file is added to or removed from the call's directory."""
        try:
            return (self.calls_dir / key).stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def call_id(self, key: str) -> str | None:
        try:
            value = _read_json(self.calls_dir / key / "call.json").get("callId")
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, str) and value else None

    def read(self, key: str) -> CallState | None:
        """Snapshot a call under its lock; ``None`` if it is gone (completed elsewhere)."""
        d = self.calls_dir / key
        if (self.done_dir / key).exists():
            self._retire(key)  # a late duplicate recreated the directory
            return None
        started = end = False
        end_mtime: float | None = None
        segments: set[int] = set()
        chunks: set[int] = set()
        last = 0.0
        now = time.time()
        try:
            entries = list(os.scandir(d))
        except FileNotFoundError:
            return None
        for e in entries:
            try:
                mtime = e.stat().st_mtime
            except FileNotFoundError:
                continue
            if e.name.startswith(_TMP_PREFIX):
                if now - mtime > _STALE_TMP_S:  # left by a killed writer
                    with contextlib.suppress(OSError):
                        os.unlink(e.path)
                continue
            last = max(last, mtime)
            item = _file_item(e.name)
            if item == STARTED:
                started = True
            elif item == ENDED:
                end, end_mtime = True, mtime
            elif item is not None:
                kind, _, num = item.partition(" ")
                (chunks if kind == "chunk" else segments).add(int(num))
        if last == 0.0:
            # Nothing but the directory yet: a writer between mkdir and its first file (maybe
            # in another process). Its age, not the epoch, is how long it has been idle.
            try:
                last = d.stat().st_mtime
            except FileNotFoundError:
                return None
        lines = _read_lines(d / "sent.log")
        sent = frozenset(x for x in lines if not x.startswith(DEAD_PREFIX))
        dead = frozenset(x[len(DEAD_PREFIX) :] for x in lines if x.startswith(DEAD_PREFIX))
        return CallState(
            key=key,
            call_id=self.call_id(key),
            started=started,
            segments=frozenset(segments),
            chunks=frozenset(chunks),
            end=end,
            end_mtime=end_mtime,
            sent=sent,
            dead=dead,
            last_activity=last,
        )

    def load_json(self, key: str, item: str) -> Any:
        return _read_json(self.calls_dir / key / _item_file(item))

    def load_segments(self, key: str, indices: frozenset[int]) -> list[dict[str, Any]]:
        return [self.load_json(key, segment_item(i)) for i in sorted(indices)]

    def load_chunk(self, key: str, index: int) -> bytes:
        with open(self.calls_dir / key / _item_file(chunk_item(index)), "rb") as f:
            return f.read()

    def load_audio_format(self, key: str) -> tuple[int, int] | None:
        try:
            meta = _read_json(self.calls_dir / key / "audio.json")
            return int(meta["sampleRate"]), int(meta["numChannels"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # -- locking ---------------------------------------------------------------------------

    def try_lock(self, key: str) -> CallLock | None:
        """The call's delivery lock, or ``None`` if another thread or process holds it."""
        path = self.locks_dir / f"{key}.lock"
        if self._lock_mode == "flock":
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
            return CallLock(path, fd, "flock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                return None
            if age > self._stale_lock_after:  # its holder died; the next try takes it
                with contextlib.suppress(OSError):
                    path.unlink()
            return None
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return CallLock(path, None, "excl")

    # -- lock holder only ------------------------------------------------------------------

    def mark_sent(self, key: str, item: str) -> None:
        """Record delivery, then drop the chunk's bytes (the log line is the truth)."""
        self._append(key, item)
        if item.startswith("chunk "):
            with contextlib.suppress(FileNotFoundError):
                (self.calls_dir / key / _item_file(item)).unlink()

    def _append(self, key: str, line: str) -> None:
        with open(self.calls_dir / key / "sent.log", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def dead_letter(
        self, key: str, items: list[str], *, status: int | None, message: str, now: float
    ) -> None:
        """Move items to ``dead/<key>`` with why; the rest of the call goes on."""
        src = self.calls_dir / key
        dst = self.dead_dir / key
        _mkdir_private(dst)
        for name in ("call.json", "audio.json"):
            if (src / name).exists() and not (dst / name).exists():
                shutil.copyfile(src / name, dst / name)
        reasons = self._reasons(key)
        for item in items:
            name = _item_file(item)
            with contextlib.suppress(FileNotFoundError):
                os.replace(src / name, dst / name)
            reasons[item] = {"status": status, "message": message[:_REASON_MAX], "time": now}
        _write_atomic(dst / "reason.json", _dumps(reasons))
        for item in items:
            if not item.startswith("segment "):
                self._append(key, DEAD_PREFIX + item)

    def _reasons(self, key: str) -> dict[str, Any]:
        try:
            value = _read_json(self.dead_dir / key / "reason.json")
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def complete(self, key: str, lock: CallLock) -> None:
        """Retire a finished call: tombstone first, so late duplicates and other readers skip it."""
        _write_atomic(self.done_dir / key, b"")
        src = self.calls_dir / key
        if (self.dead_dir / key).exists() and (src / "sent.log").exists():
            # What already arrived, so a resend of the dead items skips it.
            shutil.copyfile(src / "sent.log", self.dead_dir / key / "sent.log")
        self._retire(key)
        lock.release()

    def _retire(self, key: str) -> None:
        # Rename first: a writer racing us fails cleanly instead of writing into a half-deleted dir.
        _mkdir_private(self.trash_dir)
        trash = self.trash_dir / f"{key}.{secrets.token_hex(4)}"
        try:
            os.replace(self.calls_dir / key, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def recover(self, *, now: float | None = None) -> None:
        """Tidy what a killed process left behind: trash and old tombstones."""
        now = time.time() if now is None else now
        shutil.rmtree(self.trash_dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            for e in os.scandir(self.done_dir):
                with contextlib.suppress(OSError):
                    if now - e.stat().st_mtime > _TOMBSTONE_TTL_S:
                        os.unlink(e.path)

    # -- dead letters ----------------------------------------------------------------------

    def dead_keys(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.dead_dir) if e.is_dir())
        except FileNotFoundError:
            return []

    def resolve_dead_key(self, key_or_call_id: str) -> str:
        if (self.dead_dir / key_or_call_id).is_dir():
            return key_or_call_id
        return call_key(key_or_call_id)

    def dead_info(self, key: str) -> dict[str, Any] | None:
        d = self.dead_dir / key
        if not d.is_dir():
            return None
        call_id: str | None = None
        with contextlib.suppress(OSError, ValueError, AttributeError):
            call_id = _read_json(d / "call.json").get("callId")
        items = sorted(item for e in os.scandir(d) if (item := _file_item(e.name)) is not None)
        return {"key": key, "callId": call_id, "items": items, "reasons": self._reasons(key)}

    def resend(self, key: str) -> int:
        """Move a call's dead items back into the live queue. Returns how many items moved.

        Raises ``BlockingIOError`` if a process is delivering the call right now.
        """
        src = self.dead_dir / key
        if not src.is_dir():
            return 0
        lock = self.try_lock(key)
        if lock is None:
            raise BlockingIOError(f"call {key} is being delivered right now; try again")
        try:
            with contextlib.suppress(FileNotFoundError):
                (self.done_dir / key).unlink()
            dst = self.calls_dir / key
            _mkdir_private(dst)
            moved: list[str] = []
            for e in list(os.scandir(src)):
                item = _file_item(e.name)
                if item is not None:
                    os.replace(e.path, dst / e.name)
                    moved.append(item)
                elif e.name in ("call.json", "audio.json") and not (dst / e.name).exists():
                    os.replace(e.path, dst / e.name)
            # Keep what was delivered, forget that the moved items died.
            lines = _read_lines(dst / "sent.log") + _read_lines(src / "sent.log")
            revived = {DEAD_PREFIX + item for item in moved}
            keep = list(dict.fromkeys(x for x in lines if x not in revived))
            _write_atomic(dst / "sent.log", "".join(f"{x}\n" for x in keep).encode())
            shutil.rmtree(src, ignore_errors=True)
            return len(moved)
        finally:
            lock.release()

    def purge(self, key: str) -> bool:
        d = self.dead_dir / key
        if not d.is_dir():
            return False
        shutil.rmtree(d)
        return True

    def pending_items(self) -> int:
        """How many item files wait on disk, for the 'keeping N items on disk' line."""
        n = 0
        for key in self.pending_keys():
            with contextlib.suppress(FileNotFoundError):
                n += sum(1 for e in os.scandir(self.calls_dir / key) if _file_item(e.name))
        return n
