"""Persistent state: SQLite for calls, chunks, used URLs and the request log; files for audio."""

from __future__ import annotations

import array
import contextlib
import hashlib
import json
import os
import secrets
import sqlite3
import sys
import tempfile
import threading
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._contract import MAX_CHANNELS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from ._ids import safe_name

MISSING_LISTED = 1000  # a call's gap list stops here: pages never allocate by a wire number

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS calls(
    call_id TEXT PRIMARY KEY,
    first_seen REAL NOT NULL,
    started TEXT, started_received REAL,
    ended TEXT, ended_received REAL,
    out_of_order INTEGER NOT NULL DEFAULT 0,
    dup_started INTEGER NOT NULL DEFAULT 0,
    dup_ended INTEGER NOT NULL DEFAULT 0,
    trace_id TEXT, jaeger_url TEXT,
    wav_name TEXT
);
CREATE TABLE IF NOT EXISTS chunks(
    call_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    received REAL NOT NULL,
    late INTEGER NOT NULL DEFAULT 0,
    before_start INTEGER NOT NULL DEFAULT 0,
    repeats INTEGER NOT NULL DEFAULT 0,
    replaced INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(call_id, idx)
);
CREATE TABLE IF NOT EXISTS used_urls(nonce TEXT PRIMARY KEY, used REAL NOT NULL);
CREATE TABLE IF NOT EXISTS requests(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    endpoint TEXT,
    status INTEGER,
    event TEXT,
    call_id TEXT,
    chunk_index INTEGER,
    fault TEXT,
    error TEXT
);
"""


class UrlAlreadyUsed(Exception):
    """A one-shot upload URL was presented a second time."""


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One line of the request log; ``status`` is None when the connection was dropped."""

    time: float
    method: str
    path: str
    endpoint: str | None
    status: int | None
    event: str | None = None
    call_id: str | None = None
    chunk_index: int | None = None
    fault: str | None = None
    error: str | None = None


class Store:
    """All writes go through one lock, each on a short-lived connection, so any thread may call."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._db = data_dir / "roark.sqlite3"
        self._chunks = data_dir / "chunks"
        self._recordings = data_dir / "recordings"
        # The secret and every transcript live here: readable by us only.
        for d in (data_dir, self._chunks, self._recordings):
            _private_dir(d)
        _private_file(self._db)  # SQLite gives its -wal/-shm files the database's mode
        # Guards the one connection and multi-step writes (nonce check + chunk file + row,
        # WAV assembly). Re-entrant: a write holds it across its transaction.
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()
            if row is None:
                row = (secrets.token_hex(32),)
                db.execute("INSERT INTO meta(key, value) VALUES ('secret', ?)", row)
            self.secret = bytes.fromhex(row[0])

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """The store's connection, in a transaction, under the lock.

        One long-lived connection: closing the last one checkpoints the WAL with an
        fsync, which made every request cost ~20 ms.
        """
        with self._lock:
            if self._conn is None:
                self._conn = sqlite3.connect(self._db, timeout=10.0, check_same_thread=False)
                self._conn.row_factory = sqlite3.Row
                self._conn.execute("PRAGMA synchronous=NORMAL")
            with self._conn as db:
                yield db

    def close(self) -> None:
        """Release the connection; a later call opens it again."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _ensure_call(self, db: sqlite3.Connection, call_id: str, now: float) -> None:
        db.execute("INSERT OR IGNORE INTO calls(call_id, first_seen) VALUES (?, ?)", (call_id, now))

    # -- writes --------------------------------------------------------------------------

    def record_started(self, body: dict[str, Any], now: float) -> bool:
        """Store a call-started body; True if it is a duplicate (then nothing changes)."""
        call_id = body["pipecatCallId"]
        with self._connect() as db:
            self._ensure_call(db, call_id, now)
            (started,) = db.execute(
                "SELECT started FROM calls WHERE call_id = ?", (call_id,)
            ).fetchone()
            if started is not None:
                db.execute(
                    "UPDATE calls SET dup_started = dup_started + 1 WHERE call_id = ?", (call_id,)
                )
                return True
            db.execute(
                "UPDATE calls SET started = ?, started_received = ? WHERE call_id = ?",
                (json.dumps(body), now, call_id),
            )
            return False

    def record_ended(self, body: dict[str, Any], now: float) -> bool:
        """Store a call-ended body and assemble the WAV; True if it is a duplicate."""
        call_id = body["pipecatCallId"]
        with self._connect() as db:
            self._ensure_call(db, call_id, now)
            started, ended = db.execute(
                "SELECT started, ended FROM calls WHERE call_id = ?", (call_id,)
            ).fetchone()
            if ended is not None:
                db.execute(
                    "UPDATE calls SET dup_ended = dup_ended + 1 WHERE call_id = ?", (call_id,)
                )
                return True
            db.execute(
                "UPDATE calls SET ended = ?, ended_received = ?, out_of_order = ? "
                "WHERE call_id = ?",
                (json.dumps(body), now, int(started is None), call_id),
            )
            self._assemble(db, call_id, body)
            return False

    def put_chunk(self, call_id: str, index: int, data: bytes, nonce: str, now: float) -> None:
        """Store one chunk under a one-shot URL; UrlAlreadyUsed leaves no trace."""
        call_dir = self._chunks / safe_name(call_id)
        _private_dir(call_dir)
        final = call_dir / f"{index:08d}.pcm"
        # Each request its own temp file: a refused concurrent PUT never lands.
        tmp = _write_private_temp(call_dir, data)
        digest = hashlib.sha256(data).hexdigest()
        try:
            with self._connect() as db:
                if db.execute("SELECT 1 FROM used_urls WHERE nonce = ?", (nonce,)).fetchone():
                    raise UrlAlreadyUsed(nonce)
                db.execute("INSERT INTO used_urls(nonce, used) VALUES (?, ?)", (nonce, now))
                self._ensure_call(db, call_id, now)
                started, ended = db.execute(
                    "SELECT started, ended FROM calls WHERE call_id = ?", (call_id,)
                ).fetchone()
                prior = db.execute(
                    "SELECT sha256 FROM chunks WHERE call_id = ? AND idx = ?", (call_id, index)
                ).fetchone()
                os.replace(tmp, final)
                if prior is None:
                    db.execute(
                        "INSERT INTO chunks(call_id, idx, nbytes, sha256, received, late, "
                        "before_start) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            call_id,
                            index,
                            len(data),
                            digest,
                            now,
                            int(ended is not None),
                            int(started is None),
                        ),
                    )
                else:
                    same = prior[0] == digest
                    db.execute(
                        "UPDATE chunks SET nbytes = ?, sha256 = ?, received = ?, "
                        "late = max(late, ?), repeats = repeats + ?, replaced = replaced + ? "
                        "WHERE call_id = ? AND idx = ?",
                        (
                            len(data),
                            digest,
                            now,
                            int(ended is not None),
                            int(same),
                            int(not same),
                            call_id,
                            index,
                        ),
                    )
                if ended is not None:
                    self._assemble(db, call_id, json.loads(ended))
        finally:
            tmp.unlink(missing_ok=True)

    def set_trace(self, call_id: str, trace_id: str, jaeger_url: str, now: float) -> None:
        with self._connect() as db:
            self._ensure_call(db, call_id, now)
            db.execute(
                "UPDATE calls SET trace_id = ?, jaeger_url = ? WHERE call_id = ?",
                (trace_id, jaeger_url, call_id),
            )

    def log_request(self, rec: RequestRecord) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO requests(time, method, path, endpoint, status, event, call_id, "
                "chunk_index, fault, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.time,
                    rec.method,
                    rec.path,
                    rec.endpoint,
                    rec.status,
                    rec.event,
                    rec.call_id,
                    rec.chunk_index,
                    rec.fault,
                    rec.error,
                ),
            )

    def _assemble(self, db: sqlite3.Connection, call_id: str, ended: dict[str, Any]) -> None:
        """Write the WAV: chunks in index order, 16-bit PCM at the call-ended rate/channels."""
        rate, channels = ended.get("recordingSampleRate"), ended.get("recordingNumChannels")
        if not (
            isinstance(rate, int)
            and isinstance(channels, int)
            and MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE
            and 1 <= channels <= MAX_CHANNELS
        ):
            return  # validated at ingest; a damaged store builds no WAV rather than fail
        indices = [
            i
            for (i,) in db.execute(
                "SELECT idx FROM chunks WHERE call_id = ? ORDER BY idx", (call_id,)
            )
        ]
        name = f"{safe_name(call_id)}.wav"
        tmp = _write_private_temp(self._recordings, b"")
        call_dir = self._chunks / safe_name(call_id)
        try:
            with wave.open(str(tmp), "wb") as wav:
                wav.setnchannels(channels)
                wav.setsampwidth(2)
                wav.setframerate(rate)
                for i in indices:
                    wav.writeframesraw((call_dir / f"{i:08d}.pcm").read_bytes())
            os.replace(tmp, self._recordings / name)
        finally:
            tmp.unlink(missing_ok=True)
        db.execute("UPDATE calls SET wav_name = ? WHERE call_id = ?", (name, call_id))

    # -- reads ---------------------------------------------------------------------------

    def call(self, call_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM calls WHERE call_id = ?", (call_id,)).fetchone()
            if row is None:
                return None
            chunks = db.execute(
                "SELECT * FROM chunks WHERE call_id = ? ORDER BY idx", (call_id,)
            ).fetchall()
        return self._call_dict(row, chunks)

    def calls(self) -> list[dict[str, Any]]:
        """Summaries, newest first."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM calls ORDER BY first_seen DESC").fetchall()
            out = []
            for row in rows:
                chunks = db.execute(
                    "SELECT * FROM chunks WHERE call_id = ? ORDER BY idx", (row["call_id"],)
                ).fetchall()
                full = self._call_dict(row, chunks)
                started, ended = full["started"] or {}, full["ended"] or {}
                out.append(
                    {
                        "pipecatCallId": full["pipecatCallId"],
                        "status": full["status"],
                        "agentId": started.get("agentId"),
                        "agentName": started.get("agentName"),
                        "callStartedAt": ended.get("callStartedAt")
                        or started.get("eventTimestamp"),
                        "callEndedAt": ended.get("callEndedAt"),
                        "callEndedReason": ended.get("callEndedReason"),
                        "chunkCount": len(full["chunks"]),
                        "hasRecording": full["wav_path"] is not None,
                        "flags": full["flags"],
                        "firstSeen": full["firstSeen"],
                    }
                )
        return out

    def _call_dict(self, row: sqlite3.Row, chunks: list[sqlite3.Row]) -> dict[str, Any]:
        missing = _gaps([c["idx"] for c in chunks])
        started = json.loads(row["started"]) if row["started"] else None
        ended = json.loads(row["ended"]) if row["ended"] else None
        late = [c["idx"] for c in chunks if c["late"]]
        early = [c["idx"] for c in chunks if c["before_start"]]
        flags = [
            name
            for name, on in (
                ("out_of_order", row["out_of_order"]),
                ("missing_chunks", missing),
                ("late_chunks", late),
                ("chunks_before_started", early),
            )
            if on
        ]
        status = "ended" if ended else "started" if started else "pending"
        return {
            "pipecatCallId": row["call_id"],
            "status": status,
            "started": started,
            "ended": ended,
            "chunks": {c["idx"]: c["nbytes"] for c in chunks},
            "wav_path": str(self._recordings / row["wav_name"]) if row["wav_name"] else None,
            "duplicates": {
                "call-started": row["dup_started"],
                "call-ended": row["dup_ended"],
                "chunks": {c["idx"]: c["repeats"] for c in chunks if c["repeats"]},
                "chunks_replaced": {c["idx"]: c["replaced"] for c in chunks if c["replaced"]},
            },
            "missing_chunks": missing,
            "late_chunks": late,
            "chunks_before_started": early,
            "out_of_order": bool(row["out_of_order"]),
            "flags": flags,
            "traceId": row["trace_id"],
            "jaegerUrl": row["jaeger_url"],
            "firstSeen": row["first_seen"],
        }

    def wav_bytes(self, call_id: str) -> bytes | None:
        with self._connect() as db:
            row = db.execute("SELECT wav_name FROM calls WHERE call_id = ?", (call_id,)).fetchone()
        name: str | None = row[0] if row is not None else None
        return None if name is None else (self._recordings / name).read_bytes()

    def peaks(self, call_id: str, columns: int = 600) -> dict[str, Any] | None:
        """The recording's loudness in ``columns`` steps per channel (0..1), or None.

        Reads at most 512 frames per column, so a long call costs what a short one does.
        """
        with self._connect() as db:
            row = db.execute("SELECT wav_name FROM calls WHERE call_id = ?", (call_id,)).fetchone()
        if row is None or row[0] is None:
            return None
        with wave.open(str(self._recordings / row[0]), "rb") as wav:
            channels, rate, frames = wav.getnchannels(), wav.getframerate(), wav.getnframes()
            if frames == 0 or wav.getsampwidth() != 2:
                return None
            out: list[list[float]] = [[] for _ in range(channels)]
            for col in range(columns):
                wav.setpos(col * frames // columns)
                samples = array.array("h", wav.readframes(min(512, max(1, frames // columns))))
                if sys.byteorder == "big":
                    samples.byteswap()
                for ch in range(channels):
                    track = samples[ch::channels]
                    out[ch].append(max(map(abs, track), default=0) / 32768)
        return {"durationMs": frames * 1000 // rate, "channels": out}

    def requests(self, call_id: str | None = None) -> list[dict[str, Any]]:
        """The request log in arrival order."""
        with self._connect() as db:
            if call_id is None:
                rows = db.execute("SELECT * FROM requests ORDER BY id").fetchall()
            else:
                rows = db.execute(
                    "SELECT * FROM requests WHERE call_id = ? ORDER BY id", (call_id,)
                ).fetchall()
        return [
            {
                "method": r["method"],
                "path": r["path"],
                "endpoint": r["endpoint"],
                "status": r["status"],
                "event": r["event"],
                "pipecatCallId": r["call_id"],
                "chunkIndex": r["chunk_index"],
                "fault": r["fault"],
                "error": r["error"],
                "time": r["time"],
            }
            for r in rows
        ]


def _gaps(present: list[int]) -> list[int]:
    """The first ``MISSING_LISTED`` indices absent below the highest; linear in ``present``."""
    out: list[int] = []
    expect = 0
    for index in present:  # ascending
        if index > expect:
            out.extend(range(expect, min(index, expect + MISSING_LISTED - len(out))))
        if len(out) >= MISSING_LISTED:
            break
        expect = index + 1
    return out


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _private_file(path: Path) -> None:
    """Create ``path`` 0600 if absent (SQLite then keeps the mode), tighten it if present."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(path, 0o600)


def _write_private_temp(directory: Path, data: bytes) -> Path:
    """A fresh 0600 temp file in ``directory`` holding ``data``."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)
