"""One call's session: started -> chunks -> ended, each step sent once and recorded."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Final

import pydantic

from .. import _errors
from .._capture import iso_from_ns
from . import _stats
from ._assemble import Entry, assemble, segment_entries
from ._client import RoarkClient
from ._gate import Gate
from ._items import ENDED, STARTED, ItemId, chunk, segment
from ._lock import CallLock
from ._outbox import CallGone, Outbox
from ._payloads import CallStarted, EndRecord
from ._plan import Action, plan
from ._retry import Outcome, retry_delay
from ._scheduler import DONE, Next
from ._send import Request, Result, attempt, post, upload
from ._state import CallState
from ._translate import build_end

logger: Final = _errors.logger
_LOCKED_ELSEWHERE_RETRY_S: Final = 0.5
_DISK_RETRY_S: Final = 1.0
_INVALID: Final = (ValueError, KeyError, TypeError)  # pydantic.ValidationError is a ValueError
_SENDS: Final = frozenset({"started", "chunk", "ended"})

# What a step leaves: stop with a Next; carry on after sending an item; None: read again.
Step = Next | ItemId | None


@dataclass(frozen=True, slots=True)
class StepOptions:
    grace_period: float
    orphan_timeout: float
    session_budget: int
    max_put_rejections: int
    put_rejection_window: float
    backoff_base: float
    backoff_cap: float


def _damaged(exc: Exception) -> bool:
    """Unreadable bytes (truncated, not JSON), as opposed to a readable but invalid record."""
    if isinstance(exc, pydantic.ValidationError):
        return any(e["type"] == "json_invalid" for e in exc.errors())
    return isinstance(exc, (ValueError, OSError)) and not isinstance(exc, FileNotFoundError)


def invalid_reason(exc: Exception) -> str:
    # Never the validation message itself: it echoes the input, and that may be transcript text.
    if isinstance(exc, pydantic.ValidationError):
        locs = sorted({".".join(map(str, e["loc"])) for e in exc.errors()})[:5]
        return f"invalid record: {exc.error_count()} error(s) at {', '.join(locs)}"
    return f"invalid record: {type(exc).__name__}"


class Steps:
    """Works one call at a time under its outbox lock; shared by the delivery workers."""

    def __init__(
        self,
        outbox: Outbox,
        gate: Gate,
        stats: _stats.Stats,
        options: StepOptions,
        client: Callable[[], RoarkClient],
        timeout: Callable[[], float | None],
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        sending: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        self.outbox = outbox
        self._sending = sending  # around each request: the scheduler lets others work meanwhile
        self._gate = gate
        self._stats = stats
        self._opts = options
        self._client = client
        self._timeout = timeout  # None: past the shutdown deadline
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()  # guards the three dicts below
        self._attempts: dict[str, int] = {}
        # (call key, chunk) -> (refusals in a row, when the first came).
        self._rejections: dict[tuple[str, int], tuple[int, float]] = {}
        # Delivered, but the sent log could not say so (disk full): never sent again.
        self._unrecorded: dict[str, list[ItemId]] = {}

    def forget_attempts(self) -> None:
        """The endpoint recovered: no call's next try waits for its old backoff."""
        with self._lock:
            self._attempts.clear()

    def session(self, key: str) -> Next:
        try:
            lock = self.outbox.try_lock(key, create=False)
        except CallGone:  # completed elsewhere, or never written
            with self._lock:
                self._unrecorded.pop(key, None)
            return DONE
        except OSError as exc:  # a read-only or vanished spool: wait for the disk, send nothing
            if _errors.should_log("spool_unlockable"):
                logger.warning(
                    "Roark outbox cannot lock call %s (%s); retrying when the disk allows",
                    key,
                    exc.strerror,
                )
            return Next(self._clock() + _DISK_RETRY_S, True)
        if lock is None:  # another process (or a resend) works this call right now
            return Next(self._clock() + _LOCKED_ELSEWHERE_RETRY_S, True)
        try:
            if not self._record_unrecorded(key):
                return Next(self._clock() + _DISK_RETRY_S, True)
            return self._steps(key, lock)
        finally:
            lock.release()

    def _steps(self, key: str, lock: CallLock) -> Next:
        """Up to the session budget of steps. Only we (the lock holder) write the sent log, so
        a delivery advances the snapshot in memory; any decision other than the next send
        (wait, complete, orphan) is taken on a fresh look at the directory: a full read, or
        for completing, its names (``Outbox.holds_only``)."""
        state: CallState | None = None
        end: EndRecord | None = None
        for _ in range(self._opts.session_budget):
            if self._timeout() is None:
                return Next(self._clock(), True)
            lock.touch()
            fresh = state is None
            if state is None:
                state = self.outbox.read(key)
                if state is None:
                    return DONE
                if state.log.damaged:
                    self._repair_log(key, state)
                # Only we move an end record away, and a present one is never replaced.
                end = end if end is not None and state.end else self._end(key, state)
            result = self._one(key, state, end, lock, fresh=fresh)
            if isinstance(result, ItemId):
                state = state.delivered(result, time.time())
            elif result is None:
                state = None
            else:
                return result
        return Next(self._clock(), True)  # budget spent: back of the line

    def _one(
        self, key: str, state: CallState, end: EndRecord | None, lock: CallLock, *, fresh: bool
    ) -> Step:
        now = self._clock()
        opts = self._opts
        action = plan(state, end, now, grace=opts.grace_period, orphan=opts.orphan_timeout)
        stale = not fresh and action.kind not in _SENDS
        # Decide on what the directory holds now. Completing needs only its names: the same
        # items and nothing new (reading it all again costs about as much as a send).
        if stale and (action.kind != "complete" or not self.outbox.holds_only(key, state)):
            return None
        if action.kind == "complete":
            self.outbox.complete(key, lock)
            self._stats.add("calls_completed")
            with self._lock:
                self._attempts.pop(key, None)
            return DONE
        if action.kind == "wait":
            return Next(action.until, False)
        return self._step(key, state, action, end)

    def _end(self, key: str, state: CallState) -> EndRecord | None:
        if not state.end:
            return None
        try:
            return self.outbox.load_end(key)
        except FileNotFoundError:
            return None
        except (*_INVALID, OSError) as exc:
            self._set_aside(key, state, ENDED, exc)
            return None

    def _call_id(self, key: str, state: CallState) -> str:
        if state.call_id:
            return state.call_id
        try:
            value = self.outbox.load_json(key, STARTED).get("pipecatCallId")
        except (OSError, *_INVALID, AttributeError):
            value = None
        return value if isinstance(value, str) else f"<unknown:{key}>"

    def _step(self, key: str, state: CallState, action: Action, end: EndRecord | None) -> Step:
        """Do one action; ``None``: read the call again and carry on; an item: it was sent."""
        call_id = self._call_id(key, state)
        if action.kind == "started":
            try:
                raw = self.outbox.load_bytes(key, STARTED)
                body = CallStarted.model_validate_json(raw).wire_json()
            except (*_INVALID, OSError) as exc:
                return self._set_aside(key, state, STARTED, exc)
            return self._send(key, call_id, STARTED, post(body))
        if action.kind == "chunk":
            try:
                pcm = self.outbox.load_chunk(key, action.index)
            except FileNotFoundError:
                return None  # delivered meanwhile by a racing rewrite; the log decides
            return self._send(key, call_id, chunk(action.index), upload(call_id, action.index, pcm))
        if action.kind == "ended" and end is not None:
            return self._send_ended(key, call_id, state, action, end)
        if action.kind == "orphan":
            self._synthesize_end(key, call_id, state)
            return None
        # dead_orphan: audio and an end with no call-started, idle past the orphan timeout.
        items = [chunk(i) for i in state.chunks] + [segment(i) for i in state.segments]
        self._stats.add("orphaned")
        return self._dead(
            key,
            call_id,
            [*items, STARTED, ENDED],
            None,
            "orphaned: no call-started",
            reason=_stats.ORPHANED_WITHOUT_START,
        )

    def _send_ended(
        self, key: str, call_id: str, state: CallState, action: Action, end: EndRecord
    ) -> Step:
        entries: list[Entry] = []
        rejected = 0
        for i in sorted(state.segments - {s.index for s in state.dead if s.kind == "segment"}):
            try:
                valid, left_out = segment_entries(self.outbox.load_bytes(key, segment(i)))
            except FileNotFoundError:
                continue
            except (*_INVALID, OSError) as exc:
                self._set_aside(key, state, segment(i), exc)
                continue
            entries += valid
            rejected += left_out
        try:
            body = assemble(end.payload, entries).wire_json()
        except _INVALID as exc:
            return self._set_aside(key, state, ENDED, exc)
        if rejected:
            self._stats.lost(_stats.INVALID_RECORD, rejected)
            if _errors.should_log("invalid_record"):
                logger.warning(
                    "Roark call %s: left out %d invalid record(s) from call-ended",
                    call_id,
                    rejected,
                )
        if action.missing_segments or action.missing_chunks:
            self._count_missing(call_id, action)
        return self._send(key, call_id, ENDED, post(body))

    def _count_missing(self, call_id: str, action: Action) -> None:
        segs, chunks = len(action.missing_segments), len(action.missing_chunks)
        self._stats.add("segments_missing", segs)
        self._stats.add("chunks_missing", chunks)
        if segs:
            self._stats.lost(_stats.SEGMENT_MISSING, segs)
        if chunks:
            self._stats.lost(_stats.CHUNK_MISSING, chunks)
        if _errors.should_log("call_ended_incomplete"):
            logger.warning(
                "Roark call %s ended without %d segment(s) and %d audio chunk(s) after the "
                "grace period; sending what arrived",
                call_id,
                segs,
                chunks,
            )

    def _synthesize_end(self, key: str, call_id: str, state: CallState) -> None:
        """The bot died mid-call: end it "orphaned" with what arrived, via a normal end record."""
        try:
            value = self.outbox.load_json(key, STARTED).get("eventTimestamp")
        except (OSError, *_INVALID, AttributeError):
            value = None
        chunks = {i.index for i in state.sent | state.dead if i.kind == "chunk"} | state.chunks
        segments = state.segments | {i.index for i in state.dead if i.kind == "segment"}
        fmt = self.outbox.load_audio_format(key)
        record = build_end(
            call_id,
            event_at=iso_from_ns(int(self._clock() * 1e9)),
            ended_at=iso_from_ns(int(state.last_activity * 1e9)),
            started_at=value if isinstance(value, str) else None,
            reason="orphaned",
            segments=max(segments, default=-1) + 1,  # indices are bounded when read
            chunks=max(chunks, default=-1) + 1,
            sample_rate=fmt[0] if fmt else None,
            channels=fmt[1] if fmt else None,
        )
        self.outbox.put_end(call_id, record)
        self._stats.add("orphaned")
        self._stats.lost(_stats.CALL_ORPHANED)
        if _errors.should_log("call_orphaned"):
            logger.warning("Roark call %s had no end after the orphan timeout; ending it", call_id)

    # -- sending and its outcomes ----------------------------------------------------------

    def _send(self, key: str, call_id: str, item: ItemId, request: Request) -> Step:
        now = self._clock()
        timeout = self._timeout()
        if timeout is None:
            return Next(now, True)
        blocked_until = self._gate.acquire(now)
        if blocked_until is not None:
            return Next(blocked_until, True)
        result = Result(Outcome.RETRY, message="internal error")
        try:
            with self._sending():
                result = attempt(request, self._client(), timeout, now)
        finally:  # also on a bug below us: a probe must never stay claimed
            now = self._clock()
            change = self._gate.release(
                result.outcome, now, answered=result.refused, wait=result.wait
            )
        if change.from_auth:
            logger.warning("Roark accepted the API key again; delivery resumed")
        if result.outcome is Outcome.OK:
            return self._sent(key, item)
        if result.outcome is Outcome.PERMANENT:
            items = [item]
            if item == ENDED:
                state = self.outbox.read(key)
                items += [segment(i) for i in sorted(state.segments if state else ())]
            return self._dead(key, call_id, items, result.status, result.message)
        if result.outcome is Outcome.AUTH:
            return self._auth_refused(result, change.auth_episode_began)
        return self._retry(key, call_id, item, result, now)

    def _sent(self, key: str, item: ItemId) -> Next | ItemId:
        self._stats.add("delivered")
        with self._lock:
            self._attempts.pop(key, None)
            if item.kind == "chunk":
                self._rejections.pop((key, item.index), None)
        try:
            self.outbox.mark_sent(key, item)
        except OSError as exc:  # disk full: pause this call rather than send it again
            with self._lock:
                self._unrecorded.setdefault(key, []).append(item)
            if _errors.should_log("sent_log_unwritable"):
                logger.warning(
                    "Roark outbox cannot record a delivery (%s); pausing the call until it can",
                    exc.strerror,
                )
            return Next(self._clock() + _DISK_RETRY_S, True)
        return item

    def _record_unrecorded(self, key: str) -> bool:
        """Write down deliveries the disk refused before; False while it still refuses."""
        with self._lock:
            items = self._unrecorded.pop(key, [])
        for n, item in enumerate(items):
            try:
                self.outbox.mark_sent(key, item)
            except OSError:
                with self._lock:
                    self._unrecorded[key] = items[n:] + self._unrecorded.get(key, [])
                return False
        return True

    def _retry(
        self, key: str, call_id: str, item: ItemId, result: Result, now: float
    ) -> Next | None:
        if result.refused and item.kind == "chunk":
            with self._lock:
                n, first = self._rejections.get((key, item.index), (0, now))
                self._rejections[(key, item.index)] = (n + 1, first)
            opts = self._opts
            if n + 1 >= opts.max_put_rejections and now - first >= opts.put_rejection_window:
                with self._lock:
                    self._rejections.pop((key, item.index), None)
                message = "upload URL refused: " + result.message
                return self._dead(key, call_id, [item], result.status, message)
        self._stats.add("retried")
        state, gate_at = self._gate.state(now)
        if state != "open":  # the endpoint is down: wait on the gate, not a growing backoff
            return Next(gate_at, True)
        with self._lock:
            tries = self._attempts.get(key, 0)
            self._attempts[key] = tries + 1
        opts = self._opts
        delay = retry_delay(
            tries, result.wait, self._rng, base=opts.backoff_base, cap=opts.backoff_cap
        )
        return Next(now + delay, True, backoff=True)

    def _auth_refused(self, result: Result, began: bool) -> Next:
        # Always consult the limiter, so the first line of an episode also starts its interval.
        if _errors.should_log("roark_auth_rejected", interval=600.0) or began:
            logger.error(
                "Roark rejected the API key (HTTP %s): invalid or revoked key; "
                "keeping %d items on disk",
                result.status,
                self.outbox.pending_items(),
            )
        return Next(self._gate.state(self._clock())[1], True)

    def _dead(
        self,
        key: str,
        call_id: str,
        items: list[ItemId],
        status: int | None,
        message: str,
        *,
        reason: str = _stats.DEAD_LETTER,
    ) -> Next | None:
        self.outbox.dead_letter(key, items, status=status, message=message, now=self._clock())
        self._stats.add("dead_lettered")
        self._stats.lost(reason)
        with self._lock:
            self._attempts.pop(key, None)
        main = items[0]
        if not _errors.should_log(f"dead_letter:{status}:{main.kind}"):
            return None
        if status is None:
            logger.warning(
                "Roark outbox set %s of call %s aside (%s); kept as a dead letter",
                main,
                call_id,
                message[:200],
            )
        else:
            logger.warning(
                "Roark permanently rejected %s of call %s (HTTP %s: %s); kept as a dead letter",
                main,
                call_id,
                status,
                message[:200] or "no reason given",
            )
        return None

    # -- the outbox's own damage -------------------------------------------------------------

    def _set_aside(self, key: str, state: CallState, item: ItemId, exc: Exception) -> Next | None:
        """A file we wrote cannot be used: it alone goes to the dead letters, the call goes on."""
        call_id = self._call_id(key, state)
        damaged = _damaged(exc)
        why = f"local corruption: damaged file {item.filename}"
        if not damaged:  # readable but invalid (a bug, or a hostile bridge peer)
            why = invalid_reason(exc)
        # An end record set aside is not marked done: the call then ends as an orphan.
        self.outbox.dead_letter(
            key, [item], status=None, message=why, now=self._clock(), log=item != ENDED
        )
        if damaged:
            self._local_corruption(call_id, item.filename)
            return None
        self._stats.add("dead_lettered")
        self._stats.lost(_stats.INVALID_RECORD)
        if _errors.should_log(f"invalid:{item.kind}"):
            logger.warning("Roark outbox set %s of call %s aside (%s)", item, call_id, why)
        return None

    def _repair_log(self, key: str, state: CallState) -> None:
        self.outbox.repair_log(key, state.log)
        self._local_corruption(self._call_id(key, state), "sent log", state.log.damaged)

    def _local_corruption(self, call_id: str, filename: str, n: int = 1) -> None:
        self._stats.lost(_stats.LOCAL_CORRUPTION, n)
        if _errors.should_log(f"local_corruption:{filename}"):
            logger.warning(
                "Roark outbox: local corruption in %s of call %s (damaged on this disk, not "
                "refused by Roark); set aside, the rest of the call goes on",
                filename,
                call_id,
            )
