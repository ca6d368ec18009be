"""The durable per-call outbox: one directory per call, atomic files, an append-only sent log.

Layout (``root/v1``)::

    calls/<key>/call.json        {"callId": raw id} on its first line, then the sent log's
                                 lines; <key> = sha256(call id)[:32]
    calls/<key>/started.json     call-started wire dict
    calls/<key>/seg-000000.json  segment records
    calls/<key>/chunk-000000.pcm raw PCM (deleted once delivered)
    calls/<key>/audio.json       optional {"sampleRate", "numChannels"}
    calls/<key>/end.json         the end record (``_payloads.EndRecord``)
    calls/<key>/sent.log         the sent log of a call.json from before it held one (no
                                 newline after the identity), or of a repair
    locks/<key>.lock             per-call delivery lock where the call's folder cannot be
                                 flocked (no flock, or NFS); otherwise flock on calls/<key>
    dead/<key>/...               dead-lettered item files + reason.json (+ sent.log)
    done/<key>                   tombstone of a completed call (its call.json, moved): late
                                 duplicates are ignored
    spare/<pid>-<tag>-<n>        delivered chunk files this process writes new chunks over

Sent-log lines: "started", "chunk 3", "ended", "dead chunk 4", one per line; a call's log
is the union of both places. Writes are atomic (tmp + ``os.replace``; call.json is never
replaced once there) but not fsynced: we guard against the process dying, not the OS
crashing. Only the holder of a call's lock appends to its log or removes its files;
writers may run in any thread or process. The log lives in call.json because a new file
costs an inode, and sent.log was the one file delivery still created per call.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from ._files import (
    TMP_PREFIX,
    StrPath,
    append_line,
    call_file_bytes,
    dumps,
    ends_in_newline,
    mkdir_private,
    read_bytes,
    read_call_file,
    read_json,
    read_log,
    touch_new,
    write_atomic,
    write_new,
)
from ._items import ENDED, STARTED, ItemId, chunk, segment
from ._lock import CallLock, FolderLockUnsupported, LockMode, lock_folder, resolve_mode, try_lock
from ._payloads import MAX_CHANNELS, MAX_SAMPLE_RATE, EndRecord
from ._spares import Spares
from ._state import DEAD_PREFIX, CallState, SentLog

LAYOUT: Final = "v1"
_STALE_TMP_S: Final = 600.0
_TOMBSTONE_TTL_S: Final = 7 * 24 * 3600.0
_REASON_MAX: Final = 500
_KEY_LEN: Final = 32
_NOT_ITEMS: Final = frozenset({"call.json", "sent.log", "audio.json"})

Write = Callable[[StrPath, bytes | memoryview], None]


class CallGone(FileNotFoundError):
    """The call has no folder: nothing of it is left to deliver."""


def call_key(call_id: str) -> str:
    """The directory name of a call: the raw id never appears in a path."""
    return hashlib.sha256(call_id.encode()).hexdigest()[:_KEY_LEN]


def _remove_folder(path: str) -> None:
    """A retired call's folder holds only files: unlink them, then the folder."""
    try:
        with os.scandir(path) as entries:
            for e in entries:
                os.unlink(e.path)
        os.rmdir(path)
    except OSError:  # not just files after all, or a racing remover: the thorough way
        shutil.rmtree(path, ignore_errors=True)


def _log_path(folder: str) -> str:
    """Where the lock holder appends: call.json when it holds the log (it ends in a
    newline), sent.log for a call.json from before (or none)."""
    path = f"{folder}/call.json"
    try:
        holds_log = ends_in_newline(path)
    except FileNotFoundError:
        holds_log = False
    return path if holds_log else f"{folder}/sent.log"


def is_key(text: str) -> bool:
    return len(text) == _KEY_LEN and all(c in "0123456789abcdef" for c in text)


class Outbox:
    """Durable per-call FIFO on disk, shared safely by threads and processes.

    ``write`` (atomic item files) and ``append`` (sent-log lines) are the disk seams;
    tests simulate a full disk with them.
    """

    def __init__(
        self,
        root: Path,
        *,
        lock_mode: LockMode = "auto",
        stale_lock_after: float = 300.0,
        write: Write = write_atomic,
        append: Write = append_line,
    ) -> None:
        self.root = Path(root)
        self._lock_mode = resolve_mode(lock_mode)
        self._folder_locks = self._lock_mode == "flock"  # until the filesystem says otherwise
        self._stale_lock_after = stale_lock_after
        self._write = write
        self._append_bytes = append
        mkdir_private(self.root)
        with contextlib.suppress(OSError):
            if self.root.stat().st_uid == os.getuid():
                os.chmod(self.root, 0o700)
        base = self.root / LAYOUT
        self.calls_dir = base / "calls"
        self.dead_dir = base / "dead"
        self.done_dir = base / "done"
        self.locks_dir = base / "locks"
        self.trash_dir = base / "trash"
        self.spare_dir = base / "spare"  # delivered chunk files, for new chunks (_spares)
        for d in (base, self.calls_dir, self.dead_dir, self.done_dir, self.locks_dir):
            mkdir_private(d)
        # The same folders as strings: delivery joins paths per file, and pathlib costs more.
        self._calls = str(self.calls_dir)
        self._done = str(self.done_dir)
        self._dead = str(self.dead_dir)
        self._locks = str(self.locks_dir)
        self._trash = str(self.trash_dir)
        self._retired = itertools.count()
        # A write seam of the caller's own writes every chunk itself: no spares then.
        self._spares = Spares(str(self.spare_dir)) if write is write_atomic else None
        self._trash_tag = secrets.token_hex(4)

    # -- writing (any thread, any process) -------------------------------------------------

    def put_started(self, call_id: str, payload: dict[str, Any]) -> bool:
        return self._put(call_id, STARTED, dumps(payload))

    def put_segment(self, call_id: str, index: int, record: dict[str, Any]) -> bool:
        return self._put(call_id, segment(index), dumps(record))

    def put_end(self, call_id: str, end: EndRecord | dict[str, Any]) -> bool:
        record = end if isinstance(end, EndRecord) else EndRecord.model_validate(end)
        return self._put(call_id, ENDED, record.model_dump_json().encode())

    def put_chunk(
        self,
        call_id: str,
        index: int,
        pcm: bytes | memoryview,
        *,
        sample_rate: int | None = None,
        num_channels: int | None = None,
    ) -> bool:
        """Store one chunk; the optional format lets an orphaned call still end with its audio."""
        if sample_rate is not None and num_channels is not None:
            meta = {"sampleRate": sample_rate, "numChannels": num_channels}
            self._put(call_id, None, dumps(meta), filename="audio.json")
        write = self._write if self._spares is None else self._spares.write
        return self._put(call_id, chunk(index), pcm, write=write)

    def _put(
        self,
        call_id: str,
        item: ItemId | None,
        data: bytes | memoryview,
        *,
        filename: str | None = None,
        write: Write | None = None,
    ) -> bool:
        """Write one item unless it is already there or already delivered. True if written."""
        if not call_id:
            raise ValueError("call id must be a non-empty string")
        key = call_key(call_id)
        if (self.done_dir / key).exists():
            return False
        d = self.calls_dir / key
        target = d / (item.filename if item is not None else str(filename))
        for _ in range(3):  # the lock holder may be retiring the directory under us
            if target.exists():
                return False
            if item is not None:
                log = self._call_and_log(str(d))[1]
                if item in log.sent or item in log.dead:
                    return False
            try:
                mkdir_private(d)
                if not (d / "call.json").exists():
                    # Never replaced once there: the lock holder may be appending to it.
                    once = self._write if self._write is not write_atomic else write_new
                    once(d / "call.json", call_file_bytes(call_id))
                (write or self._write)(target, data)
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
            return os.stat(f"{self._calls}/{key}").st_mtime_ns
        except FileNotFoundError:
            return None

    def call_id(self, key: str) -> str | None:
        return self._call_and_log(f"{self._calls}/{key}")[0]

    @staticmethod
    def _call_and_log(folder: str) -> tuple[str | None, SentLog]:
        """A call folder's id and sent log: call.json's lines and sent.log's, together."""
        try:
            call = read_call_file(f"{folder}/call.json")
        except OSError:
            call_id, log = None, SentLog(frozenset(), frozenset())
        else:
            call_id, log = call.call_id, call.log or SentLog(frozenset(), frozenset())
        return call_id, log | read_log(f"{folder}/sent.log")

    def call_log(self, folder: str) -> SentLog:
        return self._call_and_log(folder)[1]

    def read(self, key: str) -> CallState | None:
        """Snapshot a call under its lock; ``None`` if it is gone (completed elsewhere)."""
        d = f"{self._calls}/{key}"
        if os.path.exists(f"{self._done}/{key}"):
            self._retire(key)  # a late duplicate recreated the directory
            return None
        try:
            entries = list(os.scandir(d))
        except FileNotFoundError:
            return None
        found: dict[str, set[int]] = {"chunk": set(), "segment": set()}
        started, end_mtime, last = False, None, 0.0
        now = time.time()
        for e in entries:
            try:
                st = e.stat()
            except FileNotFoundError:
                continue
            mtime = st.st_mtime
            if e.name.startswith(TMP_PREFIX):
                # A spare renamed to a tmp name keeps its old mtime until written; the
                # rename set its ctime: a live write is never taken for a killed writer's.
                if now - max(mtime, st.st_ctime) > _STALE_TMP_S:
                    with contextlib.suppress(OSError):
                        os.unlink(e.path)
                continue
            last = max(last, mtime)
            item = ItemId.from_filename(e.name)
            if item == STARTED:
                started = True
            elif item == ENDED:
                end_mtime = mtime
            elif item is not None:
                found[item.kind].add(item.index)
        if last == 0.0:
            # Nothing but the directory yet: a writer between mkdir and its first file (maybe
            # in another process). Its age, not the epoch, is how long it has been idle.
            try:
                last = os.stat(d).st_mtime
            except FileNotFoundError:
                return None
        call_id, log = self._call_and_log(d)
        return CallState(
            key=key,
            call_id=call_id,
            started=started,
            segments=frozenset(found["segment"]),
            chunks=frozenset(found["chunk"]),
            end=end_mtime is not None,
            end_mtime=end_mtime,
            log=log,
            last_activity=last,
        )

    def holds_only(self, key: str, state: CallState) -> bool:
        """Whether the call's folder holds exactly the items of ``state`` (by name, under the
        lock): nothing arrived since, no write in progress."""
        try:
            names = os.listdir(f"{self._calls}/{key}")
        except FileNotFoundError:
            return False
        found = set()
        for name in names:
            if name in _NOT_ITEMS:
                continue
            item = ItemId.from_filename(name)
            if item is None:  # a tmp file: a write in progress; or something unknown
                return False
            found.add(item)
        return found == state.items()

    def load_json(self, key: str, item: ItemId) -> Any:
        return read_json(f"{self._calls}/{key}/{item.filename}")

    def load_bytes(self, key: str, item: ItemId) -> bytes:
        return read_bytes(f"{self._calls}/{key}/{item.filename}")

    def load_end(self, key: str) -> EndRecord:
        """Raises OSError, ValueError (damaged JSON) or pydantic's ValidationError."""
        return EndRecord.model_validate_json(read_bytes(f"{self._calls}/{key}/{ENDED.filename}"))

    def load_chunk(self, key: str, index: int) -> bytes:
        return read_bytes(f"{self._calls}/{key}/{chunk(index).filename}")

    def load_audio_format(self, key: str) -> tuple[int, int] | None:
        try:
            meta = read_json(self.calls_dir / key / "audio.json")
            rate, channels = int(meta["sampleRate"]), int(meta["numChannels"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if 0 < rate <= MAX_SAMPLE_RATE and 0 < channels <= MAX_CHANNELS:
            return rate, channels
        return None

    def try_lock(self, key: str, *, create: bool = True) -> CallLock | None:
        """The call's delivery lock, or ``None`` if another thread or process holds it.

        With flock, the lock is on the call's folder, made first if missing when ``create``;
        otherwise a missing folder raises :class:`CallGone`."""
        if self._folder_locks:
            folder = f"{self._calls}/{key}"
            try:
                try:
                    return lock_folder(folder)
                except FileNotFoundError:
                    if not create:
                        raise CallGone(folder) from None
                mkdir_private(Path(folder))
                try:
                    return lock_folder(folder)
                except FileNotFoundError:  # retired again at once: someone else works it
                    return None
            except FolderLockUnsupported:
                self._folder_locks = False  # NFS and the like: lock files, as in excl mode
        path = f"{self._locks}/{key}.lock"
        return try_lock(path, self._lock_mode, stale_after=self._stale_lock_after)

    # -- lock holder only ------------------------------------------------------------------

    def mark_sent(self, key: str, item: ItemId) -> None:
        """Record delivery, then drop the chunk's bytes (the log line is the truth)."""
        self._append(key, str(item))
        if item.kind == "chunk":
            path = f"{self._calls}/{key}/{item.filename}"
            if self._spares is not None:
                self._spares.keep(path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def drop_spares(self) -> None:
        """At shutdown: this process's spare chunk files are of no use to the next."""
        if self._spares is not None:
            self._spares.clear()

    def _append(self, key: str, line: str) -> None:
        folder = f"{self._calls}/{key}"
        self._append_bytes(_log_path(folder), f"{line}\n".encode())

    def repair_log(self, key: str, log: SentLog) -> None:
        """Rewrite a damaged sent log with the lines that still name an item."""
        self.rewrite_log(f"{self._calls}/{key}", log)

    @staticmethod
    def rewrite_log(folder: str, log: SentLog) -> None:
        """Make ``log`` the whole sent log of a call folder (lock holder only)."""
        try:
            call = read_call_file(f"{folder}/call.json")
        except FileNotFoundError:
            call = None
        if call is None or call.log is None:  # a call.json from before: sent.log holds it
            write_atomic(f"{folder}/sent.log", log.dump())
            return
        write_atomic(f"{folder}/call.json", call.head + b"\n" + log.dump())
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{folder}/sent.log")

    def dead_letter(
        self,
        key: str,
        items: list[ItemId],
        *,
        status: int | None,
        message: str,
        now: float,
        log: bool = True,
    ) -> None:
        """Move items to ``dead/<key>`` with why; the rest of the call goes on.

        ``log=False`` sets a file aside without marking its item done (a damaged end
        record: the call is then ended as an orphan with what arrived)."""
        src = self.calls_dir / key
        dst = self.dead_dir / key
        mkdir_private(dst)
        for name in ("call.json", "audio.json"):
            if (src / name).exists() and not (dst / name).exists():
                shutil.copyfile(src / name, dst / name)
        reasons = self.reasons(key)
        for item in items:
            with contextlib.suppress(FileNotFoundError):
                os.replace(src / item.filename, dst / item.filename)
            reasons[str(item)] = {"status": status, "message": message[:_REASON_MAX], "time": now}
        write_atomic(dst / "reason.json", dumps(reasons))
        for item in items if log else ():
            self._append(key, DEAD_PREFIX + str(item))

    def reasons(self, key: str) -> dict[str, Any]:
        try:
            value = read_json(self.dead_dir / key / "reason.json")
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def complete(self, key: str, lock: CallLock) -> None:
        """Retire a finished call: tombstone first, so late duplicates and other readers skip it."""
        src = f"{self._calls}/{key}"
        tomb = f"{self._done}/{key}"
        if os.path.exists(f"{self._dead}/{key}"):
            # What already arrived, so a resend of the dead items skips it.
            write_atomic(f"{self._dead}/{key}/sent.log", self.call_log(src).dump())
        try:  # the call's own call.json becomes the marker: a rename, where a new file costs
            os.replace(f"{src}/call.json", tomb)  # an inode (slow on busy ext4 without journal)
            os.utime(tomb)  # its age counts from now (recover)
        except OSError:  # no call.json (or Windows has it open): an empty marker then
            touch_new(tomb)
        self._retire(key)
        lock.release()

    def _retire(self, key: str) -> None:
        # Rename first: a writer racing us fails cleanly instead of writing into a half-deleted dir.
        trash = f"{self._trash}/{key}.{os.getpid()}-{self._trash_tag}-{next(self._retired)}"
        try:
            os.replace(f"{self._calls}/{key}", trash)
        except FileNotFoundError:
            if not os.path.isdir(self._trash):  # recover() removed it: make it, try again
                mkdir_private(self.trash_dir)
                self._retire(key)
            return
        _remove_folder(trash)

    def recover(self, *, now: float | None = None) -> None:
        """Tidy what a killed process left behind: trash and old tombstones."""
        now = time.time() if now is None else now
        shutil.rmtree(self.trash_dir, ignore_errors=True)
        if self._spares is not None:
            self._spares.sweep()
        with contextlib.suppress(FileNotFoundError):
            for e in os.scandir(self.done_dir):
                with contextlib.suppress(OSError):
                    if now - e.stat().st_mtime > _TOMBSTONE_TTL_S:
                        os.unlink(e.path)

    # -- what waits ------------------------------------------------------------------------

    def pending_items(self) -> int:
        """How many item files wait on disk, for the 'keeping N items on disk' line."""
        return self.depth()[0]

    def depth(self, now: float | None = None) -> tuple[int, float | None]:
        """(item files waiting, age in seconds of the oldest), from a scan of the calls."""
        n, oldest = 0, None
        for key in self.pending_keys():
            with contextlib.suppress(FileNotFoundError):
                for e in os.scandir(self.calls_dir / key):
                    if ItemId.from_filename(e.name) is None:
                        continue
                    n += 1
                    with contextlib.suppress(FileNotFoundError):
                        mtime = e.stat().st_mtime
                        oldest = mtime if oldest is None else min(oldest, mtime)
        now = time.time() if now is None else now
        return n, None if oldest is None else max(0.0, now - oldest)

    def dead_keys(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.dead_dir) if e.is_dir())
        except FileNotFoundError:
            return []
