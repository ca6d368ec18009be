"""The delivery thread: persists handed-over audio, then sends each call in order with retries.

One scheduler thread ("roark-delivery") owns the in-memory audio hand-off and a
due-time heap of calls; a few workers ("roark-delivery-N") each work one call at
a time under that call's outbox lock, so order is strict per call while slow
calls don't hold up others.
"""

from __future__ import annotations

import heapq
import os
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import pydantic

from .. import _errors
from ._assemble import assemble_call_ended
from ._client import RoarkClient, RoarkHTTPError
from ._outbox import (
    ENDED,
    STARTED,
    CallLock,
    CallState,
    Outbox,
    call_key,
    chunk_item,
    segment_item,
)
from ._payloads import CallStarted
from ._plan import Action, plan
from ._retry import (
    AUTH_BACKOFF_BASE_S,
    AUTH_BACKOFF_CAP_S,
    BACKOFF_BASE_S,
    BACKOFF_CAP_S,
    CircuitBreaker,
    Outcome,
    auth_backoff,
    classify,
    parse_retry_after,
    retry_delay,
)

logger: Final = _errors.logger
_LOCKED_ELSEWHERE_RETRY_S: Final = 0.5
_INVALID: Final = (ValueError, KeyError, TypeError)  # pydantic.ValidationError is a ValueError


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    """Tuning; the defaults suit production."""

    grace_period: float = 60.0  # end record in, a segment or chunk still missing: send anyway
    orphan_timeout: float = 7200.0  # no activity and no end: synthesize call-ended "orphaned"
    workers: int = 4
    handoff_limit: int = 64 * 1024 * 1024  # bytes of audio waiting to be persisted
    request_timeout: float = 10.0
    rescan_interval: float = 2.0  # how often other processes' writes are picked up
    breaker_threshold: int = 8
    breaker_cooldown: float = 5.0
    session_budget: int = 32  # steps per call before the next call gets a turn
    # A presigned PUT refused this often in a row, for at least this long: dead letter.
    # Long enough that an expiring URL (clock skew) is retried for minutes, not seconds.
    max_put_rejections: int = 5
    put_rejection_window: float = 600.0
    backoff_base: float = BACKOFF_BASE_S
    backoff_cap: float = BACKOFF_CAP_S
    auth_backoff_base: float = AUTH_BACKOFF_BASE_S
    auth_backoff_cap: float = AUTH_BACKOFF_CAP_S


@dataclass(frozen=True, slots=True)
class _Handoff:
    call_id: str
    index: int
    pcm: bytes
    sample_rate: int | None
    num_channels: int | None


@dataclass(frozen=True, slots=True)
class _Next:
    """How a session left its call: look again at ``when``; ``pending`` if work is deliverable."""

    when: float | None
    pending: bool
    backoff: bool = False  # a retry delay: new writes for the call must not cut it short


_DONE: Final = _Next(None, False)
Gate = Literal["open", "probe", "closed"]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def _invalid_reason(exc: Exception) -> str:
    # Never the validation message itself: it echoes the input, and that may be transcript text.
    if isinstance(exc, pydantic.ValidationError):
        locs = sorted({".".join(map(str, e["loc"])) for e in exc.errors()})[:5]
        return f"invalid record: {exc.error_count()} error(s) at {', '.join(locs)}"
    return f"invalid record: {type(exc).__name__}"


_instances: weakref.WeakSet[Delivery] = weakref.WeakSet()


def _reinit_all_in_child() -> None:
    for d in list(_instances):
        d._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_all_in_child)


class Delivery:
    """Delivers everything in an :class:`Outbox` to Roark; never blocks its callers."""

    def __init__(
        self,
        outbox: Outbox,
        client_factory: Callable[[], RoarkClient],
        *,
        options: DeliveryOptions | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.outbox = outbox
        self._client_factory = client_factory
        self._opts = options or DeliveryOptions()
        self._clock = clock
        self._rng = rng or random.Random()
        self._abandoned: RoarkClient | None = None
        self._init_state()
        _instances.add(self)

    def _init_state(self) -> None:
        # _lock guards every field below; nothing does I/O while holding it. Three
        # conditions share it so a wake-up reaches only the threads it concerns.
        self._lock = threading.Lock()
        # Held while hand-off items are written: whoever holds it knows no write is half done.
        # Taken before _lock, never while holding it.
        self._persist_lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the scheduler waits here
        self._work_cv = threading.Condition(self._lock)  # workers wait for ready calls
        self._idle_cv = threading.Condition(self._lock)  # force_flush waits here
        self._handoff: deque[_Handoff] = deque()
        self._handoff_bytes = 0  # includes the item being written (durable only when done)
        self._dirty: set[str] = set()  # call keys touched by our own writers
        self._rescan_asked = True
        self._rescans = 0
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        self._pending: set[str] = set()  # keys with deliverable work (incl. backing off)
        self._sigs: dict[str, int | None] = {}
        self._ready: deque[str] = deque()
        self._in_flight: set[str] = set()
        self._redo: set[str] = set()  # touched while in flight: look again at once
        self._attempts: dict[str, int] = {}
        self._backoff_until: dict[str, float] = {}
        # (call key, chunk) -> (refusals in a row, when the first came).
        self._put_rejections: dict[tuple[str, int], tuple[int, float]] = {}
        self._breaker = CircuitBreaker(self._opts.breaker_threshold, self._opts.breaker_cooldown)
        self._auth_until: float | None = None
        self._auth_attempts = 0
        self._auth_probing = False
        self._accepting = True
        self._stopping = False
        self._deadline: float | None = None  # monotonic; set by shutdown
        self._threads: list[threading.Thread] = []
        self._client: RoarkClient | None = None
        self._pid = os.getpid()
        self._counts: dict[str, int] = {
            "delivered": 0,
            "retried": 0,
            "dead": 0,
            "calls_completed": 0,
            "handoff_dropped": 0,
            "segments_missing": 0,
            "chunks_missing": 0,
            "orphaned": 0,
        }

    def _after_fork(self) -> None:
        # The parent's threads don't exist here and its sockets aren't ours: start over.
        # The parent's client is dropped unclosed on purpose (closing could disturb the parent).
        self._abandoned = self._client
        self._init_state()

    # -- callers' side (any thread; never touches disk or network) -------------------------

    def submit_chunk(
        self,
        call_id: str,
        index: int,
        pcm: bytes,
        *,
        sample_rate: int | None = None,
        num_channels: int | None = None,
    ) -> bool:
        """Hand one audio chunk over; False (and a counted drop) only when the hand-off is full."""
        with self._lock:
            if not self._accepting:
                self._counts["handoff_dropped"] += 1
                _errors.count_drop("audio_after_shutdown")
                return False
            if self._handoff_bytes + len(pcm) > self._opts.handoff_limit:
                self._counts["handoff_dropped"] += 1
                _errors.count_drop("audio_handoff_full")
                return False
            self._handoff.append(_Handoff(call_id, index, pcm, sample_rate, num_channels))
            self._handoff_bytes += len(pcm)
            self._wake.notify()
        self._ensure_started()
        return True

    def notify(self, key: str | None = None) -> None:
        """Something was written for call ``key`` (None: look at the whole outbox)."""
        with self._lock:
            if key is None:
                self._rescan_asked = True
            else:
                self._dirty.add(key)
            self._wake.notify()
        self._ensure_started()

    def force_flush(self, timeout: float) -> bool:
        """Wait until the hand-off is on disk and nothing deliverable is left, or the deadline."""
        deadline = time.monotonic() + max(0.0, timeout)
        self._ensure_started()
        with self._lock:
            want = self._rescans + 1
            self._rescan_asked = True
            self._wake.notify()
            while not (self._rescans >= want and self._idle_locked()):
                left = deadline - time.monotonic()
                if left <= 0 or not self._threads_alive():
                    return self._rescans >= want and self._idle_locked()
                self._idle_cv.wait(min(left, 0.25))
            return True

    def shutdown(self, timeout: float) -> None:
        """Stop accepting, deliver what fits before the deadline, leave the rest on disk."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            if not self._accepting:
                return
            self._accepting = False
            self._deadline = deadline
            self._notify_all_locked()
        if self._threads:
            self.force_flush(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._stopping = True
            self._notify_all_locked()
        for t in self._threads:
            t.join(max(0.05, deadline - time.monotonic()))
        while self._persist_one():  # whatever audio is still in memory goes to disk
            pass
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
            out.update(
                pending=len(self._pending) + len(self._dirty),
                in_flight=len(self._in_flight),
                handoff_bytes=self._handoff_bytes,
                handoff_items=len(self._handoff),
                auth_paused=self._auth_until is not None,
                breaker_open=self._breaker.is_open,
            )
        return out

    # -- threads ---------------------------------------------------------------------------

    def _notify_all_locked(self) -> None:
        for cv in (self._wake, self._work_cv, self._idle_cv):
            cv.notify_all()

    def _threads_alive(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def _ensure_started(self) -> None:
        if self._pid != os.getpid():  # a fork that register_at_fork didn't see
            self._after_fork()
        if self._threads:
            return
        with self._lock:
            if self._threads or self._stopping:
                return
            threads = [threading.Thread(target=self._run, name="roark-delivery", daemon=True)]
            threads += [
                threading.Thread(target=self._work, name=f"roark-delivery-{i}", daemon=True)
                for i in range(max(1, self._opts.workers))
            ]
            self._threads = threads
        for t in threads:
            t.start()

    def _idle_locked(self) -> bool:
        return not (
            self._handoff_bytes
            or self._dirty
            or self._pending
            or self._in_flight
            or self._ready
            or self._rescan_asked
        )

    def _run(self) -> None:
        """Scheduler: persist audio, pick up new work, hand due calls to workers."""
        with _errors.guard("delivery"):
            self.outbox.recover()
        next_rescan = 0.0
        while True:
            with _errors.guard("delivery"):
                while self._persist_one():
                    pass
                mono = time.monotonic()
                with self._lock:
                    rescan = self._rescan_asked or mono >= next_rescan
                if rescan:
                    self._rescan()
                    next_rescan = mono + self._opts.rescan_interval
            with self._lock:
                if self._stopping:
                    return
                now = self._clock()
                wake = self._dispatch_locked(now)
                if self._handoff or self._rescan_asked:
                    continue
                timeout = min(next_rescan - time.monotonic(), wake - now)
                if timeout > 0:
                    self._wake.wait(timeout)

    def persist_call(self, call_id: str) -> None:
        """Write the call's handed-over audio to disk now, on the caller's thread.

        Called before its end record is written: call-ended on disk must imply its audio is
        too, or a process killed right after would leave a call whose chunks never arrive.
        """
        with self._persist_lock:
            with self._lock:
                mine = [h for h in self._handoff if h.call_id == call_id]
                if not mine:
                    return
                self._handoff = deque(h for h in self._handoff if h.call_id != call_id)
            for item in mine:
                self._write_handoff(item)

    def _persist_one(self) -> bool:
        with self._persist_lock:
            with self._lock:
                if not self._handoff:
                    return False
                item = self._handoff.popleft()
            self._write_handoff(item)
        return True

    def _write_handoff(self, item: _Handoff) -> None:
        try:
            self.outbox.put_chunk(
                item.call_id,
                item.index,
                item.pcm,
                sample_rate=item.sample_rate,
                num_channels=item.num_channels,
            )
        except OSError as exc:  # disk full, permissions: the chunk is lost, the call goes on
            _errors.count_drop("audio_disk_error")
            if _errors.should_log("audio_disk_error"):
                logger.warning("Roark outbox could not store an audio chunk: %s", exc.strerror)
        finally:
            with self._lock:
                self._handoff_bytes -= len(item.pcm)
                self._mark_dirty_locked(call_key(item.call_id))

    def _mark_dirty_locked(self, key: str) -> None:
        self._dirty.add(key)
        self._wake.notify()

    def _rescan(self) -> None:
        with self._lock:
            self._rescan_asked = False
        keys = self.outbox.pending_keys()
        sigs = {k: self.outbox.signature(k) for k in keys}
        with self._lock:
            now = self._clock()
            for key, sig in sigs.items():
                if key not in self._sigs or self._sigs[key] != sig:
                    self._sigs[key] = sig
                    self._schedule_locked(key, now, pending=True)
            for key in set(self._sigs) - set(sigs):
                if key not in self._in_flight:
                    self._forget_locked(key)
            self._rescans += 1
            self._idle_cv.notify_all()

    def _forget_locked(self, key: str) -> None:
        self._sigs.pop(key, None)
        self._due.pop(key, None)
        self._pending.discard(key)
        self._attempts.pop(key, None)
        self._backoff_until.pop(key, None)

    def _schedule_locked(self, key: str, when: float, *, pending: bool) -> None:
        if key in self._in_flight:
            self._redo.add(key)
            return
        if pending:
            self._pending.add(key)
        else:
            self._pending.discard(key)
        when = max(when, self._backoff_until.get(key, when))
        if key in self._due and self._due[key] <= when:
            return
        self._due[key] = when
        heapq.heappush(self._heap, (when, key))

    def _gate_locked(self, now: float) -> tuple[Gate, float]:
        """Whether requests may go out: auth pause and circuit breaker, one probe when due."""
        if self._auth_until is not None:
            if self._auth_probing:
                return "closed", now + 1.0
            if now < self._auth_until:
                return "closed", self._auth_until
            return "probe", now
        if self._breaker.is_open:
            if self._breaker.probing:
                return "closed", now + 1.0
            at = self._breaker.retry_at(now)
            return ("probe", now) if at <= now else ("closed", at)
        return "open", now

    def _dispatch_locked(self, now: float) -> float:
        """Move due calls to the workers; returns when to look again."""
        for key in self._dirty:
            self._schedule_locked(key, now, pending=True)
        self._dirty.clear()
        gate, gate_at = self._gate_locked(now)
        budget = 1 if gate == "probe" else (0 if gate == "closed" else len(self._heap))
        while self._heap and budget > 0:
            when, key = self._heap[0]
            if self._due.get(key) != when:  # superseded entry
                heapq.heappop(self._heap)
                continue
            if when > now:
                break
            heapq.heappop(self._heap)
            del self._due[key]
            self._in_flight.add(key)
            self._ready.append(key)
            budget -= 1
        if self._ready:
            self._work_cv.notify(len(self._ready))
        wake = self._heap[0][0] if self._heap else now + 3600.0
        return max(gate_at, wake) if gate == "closed" else wake

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._ready and not self._stopping:
                    self._work_cv.wait()
                if self._stopping:
                    return
                key = self._ready.popleft()
            result = _Next(self._clock() + 1.0, True)
            try:
                with _errors.guard("delivery"):
                    result = self._session(key)
            finally:
                self._finish(key, result)

    def _finish(self, key: str, result: _Next) -> None:
        sig = self.outbox.signature(key)
        with self._lock:
            self._in_flight.discard(key)
            now = self._clock()
            if sig is None and result.when is None:
                self._forget_locked(key)
            else:
                self._sigs[key] = sig
                if result.backoff and result.when is not None:
                    self._backoff_until[key] = result.when
                else:
                    self._backoff_until.pop(key, None)
                if key in self._redo:
                    result = _Next(now, True)
                when = now + 3600.0 if result.when is None else result.when
                self._schedule_locked(key, when, pending=result.pending)
            self._redo.discard(key)
            self._wake.notify()
            if self._idle_locked():
                self._idle_cv.notify_all()

    # -- one call ----------------------------------------------------------------------------

    def _session(self, key: str) -> _Next:
        lock = self.outbox.try_lock(key)
        if lock is None:  # another process (or a resend) works this call right now
            return _Next(self._clock() + _LOCKED_ELSEWHERE_RETRY_S, True)
        try:
            for _ in range(self._opts.session_budget):
                with self._lock:
                    if self._stopping or self._past_deadline():
                        return _Next(self._clock(), True)
                lock.touch()
                state = self.outbox.read(key)
                if state is None:
                    return _DONE
                end = self._end_counts(key, state)
                now = self._clock()
                action = plan(
                    state,
                    end,
                    now,
                    grace=self._opts.grace_period,
                    orphan=self._opts.orphan_timeout,
                )
                if action.kind == "complete":
                    self.outbox.complete(key, lock)
                    with self._lock:
                        self._counts["calls_completed"] += 1
                    return _DONE
                if action.kind == "wait":
                    return _Next(action.until, False)
                step = self._step(key, state, action, lock)
                if step is not None:
                    return step
            return _Next(self._clock(), True)  # budget spent: back of the line
        finally:
            lock.release()

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _end_counts(self, key: str, state: CallState) -> tuple[int, int, bool] | None:
        if not state.end:
            return None
        try:
            end = self.outbox.load_json(key, ENDED)
            return int(end["segments"]), int(end["chunks"]), bool(end.get("started", True))
        except FileNotFoundError:
            return None
        except (*_INVALID, OSError):
            return (0, 0, True)  # a broken end record: the ended step dead-letters it

    def _call_id(self, key: str, state: CallState) -> str | None:
        if state.call_id:
            return state.call_id
        try:
            value = self.outbox.load_json(key, STARTED).get("pipecatCallId")
        except (OSError, *_INVALID, AttributeError):
            return None
        return value if isinstance(value, str) else None

    def _step(self, key: str, state: CallState, action: Action, lock: CallLock) -> _Next | None:
        """Do one action; ``None`` means carry on with this call."""
        call_id = self._call_id(key, state) or f"<unknown:{key}>"
        if action.kind == "started":
            try:
                body = CallStarted.model_validate(self.outbox.load_json(key, STARTED)).wire()
            except (*_INVALID, OSError) as exc:
                return self._dead(key, call_id, [STARTED], None, _invalid_reason(exc))
            return self._send(key, call_id, STARTED, lambda c, t: c.post_event(body, timeout=t))
        if action.kind == "chunk":
            return self._send_chunk(key, call_id, action.index)
        if action.kind == "ended":
            return self._send_ended(key, call_id, state, action)
        if action.kind == "orphan":
            self._synthesize_end(key, call_id, state)
            return None
        # dead_orphan: audio and an end with no call-started, idle past the orphan timeout.
        items = [chunk_item(i) for i in state.chunks] + [segment_item(i) for i in state.segments]
        with self._lock:
            self._counts["orphaned"] += 1
        _errors.count_drop("orphaned_without_call_started")
        return self._dead(key, call_id, [*items, STARTED, ENDED], None, "orphaned: no call-started")

    def _send_ended(self, key: str, call_id: str, state: CallState, action: Action) -> _Next | None:
        seg_items = [segment_item(i) for i in sorted(state.segments)]
        try:
            end = self.outbox.load_json(key, ENDED)
            body, rejected = assemble_call_ended(
                end, self.outbox.load_segments(key, state.segments)
            )
        except (*_INVALID, OSError) as exc:
            return self._dead(key, call_id, [ENDED, *seg_items], None, _invalid_reason(exc))
        if rejected:
            _errors.count_drop("invalid_record", rejected)
            if _errors.should_log("invalid_record"):
                logger.warning(
                    "Roark call %s: left out %d invalid record(s) from call-ended",
                    call_id,
                    rejected,
                )
        if action.missing_segments or action.missing_chunks:
            self._count_missing(call_id, action)
        return self._send(key, call_id, ENDED, lambda c, t: c.post_event(body, timeout=t))

    def _count_missing(self, call_id: str, action: Action) -> None:
        segs, chunks = len(action.missing_segments), len(action.missing_chunks)
        with self._lock:
            self._counts["segments_missing"] += segs
            self._counts["chunks_missing"] += chunks
        if segs:
            _errors.count_drop("segment_missing", segs)
        if chunks:
            _errors.count_drop("chunk_missing", chunks)
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
        started_at: str | None = None
        try:
            value = self.outbox.load_json(key, STARTED).get("eventTimestamp")
            started_at = value if isinstance(value, str) else None
        except (OSError, *_INVALID, AttributeError):
            pass
        payload: dict[str, Any] = {
            "event": "call-ended",
            "pipecatCallId": call_id,
            "eventTimestamp": _iso(self._clock()),
            "callStartedAt": started_at,
            "callEndedAt": _iso(state.last_activity),
            "callEndedReason": "orphaned",
        }
        fmt = self.outbox.load_audio_format(key)
        if fmt is not None and any(x.startswith("chunk ") for x in state.sent):
            payload["recordingSampleRate"], payload["recordingNumChannels"] = fmt
        segments = max(state.segments, default=-1) + 1
        self.outbox.put_end(call_id, {"segments": segments, "chunks": 0, "payload": payload})
        with self._lock:
            self._counts["orphaned"] += 1
        _errors.count_drop("call_orphaned")
        if _errors.should_log("call_orphaned"):
            logger.warning("Roark call %s had no end after the orphan timeout; ending it", call_id)

    def _send_chunk(self, key: str, call_id: str, index: int) -> _Next | None:
        item = chunk_item(index)
        try:
            pcm = self.outbox.load_chunk(key, index)
        except FileNotFoundError:
            return None  # delivered meanwhile by a racing rewrite; the log decides

        def attempt(client: RoarkClient, timeout: float) -> object:
            url = client.presign(call_id, index, timeout=timeout).uploadUrl  # fresh every try
            try:
                return client.put_chunk(url, pcm, timeout=timeout)
            except RoarkHTTPError as exc:
                if exc.status is not None and classify(exc.status) in (
                    Outcome.AUTH,
                    Outcome.PERMANENT,
                ):
                    raise _PutRefused(exc.status, exc.message) from None
                raise

        return self._send(key, call_id, item, attempt, chunk_index=index)

    # -- sending and its outcomes --------------------------------------------------------------

    def _acquire(self, now: float) -> float | None:
        """Claim the right to send now; else when to try again."""
        with self._lock:
            gate, at = self._gate_locked(now)
            if gate == "closed":
                return at
            if gate == "probe":
                if self._auth_until is not None:
                    self._auth_probing = True
                elif not self._breaker.allow(now):
                    return self._breaker.retry_at(now) + 0.1
            return None

    def _request_timeout(self) -> float | None:
        timeout = self._opts.request_timeout
        if self._deadline is not None:
            timeout = min(timeout, self._deadline - time.monotonic())
        return timeout if timeout > 0 else None

    def _client_locked(self) -> RoarkClient:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def _send(
        self,
        key: str,
        call_id: str,
        item: str,
        request: Callable[[RoarkClient, float], object],
        *,
        chunk_index: int | None = None,
    ) -> _Next | None:
        now = self._clock()
        timeout = self._request_timeout()
        if timeout is None:
            return _Next(now, True)
        blocked_until = self._acquire(now)
        if blocked_until is not None:
            return _Next(blocked_until, True)
        with self._lock:
            client = self._client_locked()
        status: int | None = None
        message = ""
        retry_after: str | None = None
        refused = False  # the presigned PUT was refused: the server did answer
        outcome = Outcome.RETRY
        try:
            request(client, timeout)
            outcome = Outcome.OK
        except _PutRefused as exc:
            status, message, refused = exc.status, exc.message, True
        except RoarkHTTPError as exc:
            status, message, retry_after = exc.status, exc.message, exc.retry_after
            outcome = classify(status)
        finally:  # also on a bug below us: a half-open probe must never stay claimed
            now = self._clock()
            self._release(outcome, now, answered=refused)
        if outcome is Outcome.OK:
            self.outbox.mark_sent(key, item)
            with self._lock:
                self._counts["delivered"] += 1
                self._attempts.pop(key, None)
                if chunk_index is not None:
                    self._put_rejections.pop((key, chunk_index), None)
            return None
        if outcome is Outcome.PERMANENT:
            items = [item]
            if item == ENDED:
                items += [segment_item(i) for i in sorted(self._segments_on_disk(key))]
            return self._dead(key, call_id, items, status, message)
        if outcome is Outcome.AUTH:
            return self._auth_rejected(status)
        if refused and chunk_index is not None:
            with self._lock:
                n, first = self._put_rejections.get((key, chunk_index), (0, now))
                n += 1
                self._put_rejections[(key, chunk_index)] = (n, first)
            if (
                n >= self._opts.max_put_rejections
                and now - first >= self._opts.put_rejection_window
            ):
                with self._lock:
                    self._put_rejections.pop((key, chunk_index), None)
                return self._dead(key, call_id, [item], status, "upload URL refused: " + message)
        with self._lock:
            attempt = self._attempts.get(key, 0)
            self._attempts[key] = attempt + 1
            self._counts["retried"] += 1
        delay = retry_delay(
            attempt,
            parse_retry_after(retry_after, now),
            self._rng,
            base=self._opts.backoff_base,
            cap=self._opts.backoff_cap,
        )
        return _Next(now + delay, True, backoff=True)

    def _segments_on_disk(self, key: str) -> frozenset[int]:
        state = self.outbox.read(key)
        return state.segments if state is not None else frozenset()

    def _release(self, outcome: Outcome, now: float, *, answered: bool) -> None:
        """Feed the breaker and the auth pause with how the request went."""
        with self._lock:
            self._auth_probing = False
            if outcome is Outcome.AUTH:
                self._breaker.release_probe()
                return
            if outcome is Outcome.RETRY and not answered:
                self._breaker.record_failure(now)
                return
            self._breaker.record_success()
            if self._auth_until is not None:
                self._auth_until = None
                self._auth_attempts = 0
                resumed = True
            else:
                resumed = False
        if resumed:
            logger.warning("Roark accepted the API key again; delivery resumed")

    def _auth_rejected(self, status: int | None) -> _Next:
        now = self._clock()
        with self._lock:
            first = self._auth_until is None
            self._auth_until = now + auth_backoff(
                self._auth_attempts,
                base=self._opts.auth_backoff_base,
                cap=self._opts.auth_backoff_cap,
            )
            self._auth_attempts += 1
            until = self._auth_until
        # Always consult the limiter, so the first line of an episode also starts its interval.
        if _errors.should_log("roark_auth_rejected", interval=600.0) or first:
            logger.error(
                "Roark rejected the API key (HTTP %s): invalid or revoked key; "
                "keeping %d items on disk",
                status,
                self.outbox.pending_items(),
            )
        return _Next(until, True)

    def _dead(
        self, key: str, call_id: str, items: list[str], status: int | None, message: str
    ) -> _Next | None:
        self.outbox.dead_letter(key, items, status=status, message=message, now=self._clock())
        main = items[0]
        with self._lock:
            self._counts["dead"] += 1
            self._attempts.pop(key, None)
        _errors.count_drop("dead_letter")
        kind = main.split(" ")[0]
        if _errors.should_log(f"dead_letter:{status}:{kind}"):
            logger.warning(
                "Roark permanently rejected %s of call %s (HTTP %s: %s); kept as a dead letter",
                main,
                call_id,
                status,
                message[:200] or "no reason given",
            )
        return None


class _PutRefused(Exception):
    """The presigned URL was refused (expired, used): retry with a fresh one, up to a limit."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.message = message
