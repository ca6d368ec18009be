"""The delivery threads: persist handed-over audio, then send each call in order.

One thread ("roark-delivery") writes the audio hand-off and dispatches due calls;
a few workers ("roark-delivery-N") each work one call at a time under that call's
outbox lock, so order is strict per call while slow calls don't hold up others.
"""

from __future__ import annotations

import os
import random
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from .. import _errors
from ..audio._chunks import PCM, Chunk
from ._client import LazyClient, RoarkClient
from ._gate import PROBE_INTERVAL_S, Gate, GatePolicy
from ._handoff import Handoff
from ._outbox import Outbox
from ._retry import AUTH_BACKOFF_BASE_S, AUTH_BACKOFF_CAP_S, BACKOFF_BASE_S, BACKOFF_CAP_S
from ._scheduler import Next, Scheduler
from ._stats import INVALID_RECORD, Stats
from ._steps import StepOptions, Steps, invalid_reason

_FALLBACK_RETRY_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    """Tuning; the defaults suit production."""

    grace_period: float = 60.0  # end record in, a segment or chunk still missing: send anyway
    orphan_timeout: float = 7200.0  # no activity and no end: synthesize call-ended "orphaned"
    workers: int = 4
    lanes: int = 1  # workers busy at once, plus those waiting on a slow request (_scheduler)
    slow_request: float = 0.005  # a request out this long frees its worker's lane
    handoff_limit: int = 64 * 1024 * 1024  # bytes of audio waiting in memory to be persisted
    request_timeout: float = 10.0
    rescan_interval: float = 2.0  # how often other processes' writes are picked up
    breaker_threshold: int = 8
    probe_interval: float = PROBE_INTERVAL_S  # while Roark fails: one request this often
    session_budget: int = 32  # steps per call before the next call gets a turn
    # A presigned PUT refused this often in a row, for at least this long: dead letter.
    # Long enough that an expiring URL (clock skew) is retried for minutes, not seconds.
    max_put_rejections: int = 5
    put_rejection_window: float = 600.0
    backoff_base: float = BACKOFF_BASE_S
    backoff_cap: float = BACKOFF_CAP_S
    auth_backoff_base: float = AUTH_BACKOFF_BASE_S
    auth_backoff_cap: float = AUTH_BACKOFF_CAP_S

    def steps(self) -> StepOptions:
        return StepOptions(
            grace_period=self.grace_period,
            orphan_timeout=self.orphan_timeout,
            session_budget=self.session_budget,
            max_put_rejections=self.max_put_rejections,
            put_rejection_window=self.put_rejection_window,
            backoff_base=self.backoff_base,
            backoff_cap=self.backoff_cap,
        )

    def gate(self) -> GatePolicy:
        return GatePolicy(
            threshold=self.breaker_threshold,
            probe_interval=self.probe_interval,
            auth_backoff_base=self.auth_backoff_base,
            auth_backoff_cap=self.auth_backoff_cap,
        )


_instances: weakref.WeakSet[Delivery] = weakref.WeakSet()
_abandoned: list[LazyClient] = []  # parents' clients in a forked child: never used, never closed


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
        self._opts = options or DeliveryOptions()
        self._clock = clock
        self._rng = rng
        self._client = LazyClient(client_factory)
        self._init_state()
        _instances.add(self)

    def _init_state(self) -> None:
        self._sched = Scheduler(lanes=self._opts.lanes, slow_request=self._opts.slow_request)
        self._stats = Stats(self.outbox.depth)
        self._handoff = Handoff(
            self.outbox, self._stats, self._opts.handoff_limit, self._sched.mark_dirty
        )
        self._gate = Gate(self._opts.gate())
        self._steps = Steps(
            self.outbox,
            self._gate,
            self._stats,
            self._opts.steps(),
            self._client.get,
            self._request_timeout,
            clock=self._clock,
            rng=self._rng,
            sending=self._sched.sending,
        )
        self._accepting = True
        self._deadline: float | None = None  # monotonic; set by shutdown
        self._threads: list[threading.Thread] = []
        self._pid = os.getpid()

    def _after_fork(self) -> None:
        # The parent's threads don't exist here and its sockets aren't ours: start over.
        # The parent's client is kept unclosed on purpose (closing could disturb the parent).
        _abandoned.append(self._client)
        self._client = LazyClient(self._client.factory)
        self._init_state()

    # -- callers' side (any thread; never touches the network) -----------------------------

    def submit_chunk(
        self,
        call_id: str,
        index: int,
        pcm: PCM,
        *,
        sample_rate: int | None = None,
        num_channels: int | None = None,
    ) -> bool:
        """Hand one audio chunk over; False only if it could not be stored at all (counted)."""
        stored = self._handoff.submit(Chunk(call_id, index, pcm, sample_rate, num_channels))
        if self._accepting:
            self._ensure_started()
        return stored

    def reject(self, call_id: str | None, exc: ValueError) -> None:
        self._stats.lost(INVALID_RECORD)
        if _errors.should_log("record_rejected"):
            _errors.logger.warning(
                "Roark call %s: rejected a call record (%s)", call_id, invalid_reason(exc)
            )

    def persist_call(self, call_id: str) -> None:
        self._handoff.persist_call(call_id)

    def notify(self, key: str | None = None) -> None:
        """Something was written for call ``key`` (None: look at the whole outbox)."""
        self._sched.mark_dirty(key)
        self._ensure_started()

    def force_flush(self, timeout: float) -> bool:
        """Wait until the hand-off is on disk and nothing deliverable is left, or the deadline."""
        deadline = time.monotonic() + max(0.0, timeout)
        self._ensure_started()
        s = self._sched
        with s.lock:
            want = s.rescans + 1
            s.rescan_asked = True
            s.wake.notify()
            while not (s.rescans >= want and self._idle_locked()):
                left = deadline - time.monotonic()
                if left <= 0 or not self._threads_alive():
                    return s.rescans >= want and self._idle_locked()
                s.idle_cv.wait(min(left, 0.25))
            return True

    def shutdown(self, timeout: float) -> None:
        """Stop accepting, deliver what fits before the deadline, leave the rest on disk."""
        deadline = time.monotonic() + max(0.0, timeout)
        if not self._accepting:
            return
        self._accepting = False
        self._handoff.close_memory()  # later chunks go straight to disk, for the next process
        with self._sched.lock:
            self._deadline = deadline
            self._sched.notify_all_locked()
        if self._threads:
            self.force_flush(max(0.0, deadline - time.monotonic()))
        with self._sched.lock:
            self._sched.stopping = True
            self._sched.notify_all_locked()
        for t in self._threads:
            t.join(max(0.05, deadline - time.monotonic()))
        while self._handoff.persist_one():  # whatever audio is still in memory goes to disk
            pass
        self.outbox.drop_spares()
        self._client.close()

    @property
    def counters(self) -> Stats:
        return self._stats

    def stats(self) -> dict[str, Any]:
        out = self._stats.snapshot()
        out.update(self._sched.counts())
        out.update(self._handoff.counts())
        out.update(auth_paused=self._gate.auth_paused, breaker_open=self._gate.breaker_open)
        return out

    # -- threads ---------------------------------------------------------------------------

    def _idle_locked(self) -> bool:
        return self._sched.idle_locked() and self._handoff.empty()

    def _threads_alive(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def _ensure_started(self) -> None:
        if self._pid != os.getpid():  # a fork that register_at_fork didn't see
            self._after_fork()
        if self._threads:
            return
        with self._sched.lock:
            if self._threads or self._sched.stopping:
                return
            threads = [threading.Thread(target=self._run, name="roark-delivery", daemon=True)]
            threads += [
                threading.Thread(target=self._work, name=f"roark-delivery-{i}", daemon=True)
                for i in range(max(1, self._opts.workers))
            ]
            self._threads = threads
        for t in threads:
            t.start()

    def _run(self) -> None:
        """Persist audio, pick up new work, hand due calls to workers."""
        with _errors.guard("delivery"):
            self.outbox.recover()
        next_rescan = 0.0
        s = self._sched
        while True:
            with _errors.guard("delivery"):
                while self._handoff.persist_one():
                    pass
                mono = time.monotonic()
                shut = self._gate.shut
                with s.lock:
                    asked = s.rescan_asked
                    # Roark is down and a call of ours waits to probe it: a rescan (a stat
                    # per waiting call) could let nothing go. The probe's success asks one.
                    skip = shut and s.has_pending_locked()
                if asked or mono >= next_rescan:
                    if asked or not skip:
                        self._rescan()
                    next_rescan = mono + self._opts.rescan_interval
            now = self._clock()
            gate, gate_at = self._gate.state(now)
            with s.lock:
                if s.stopping:
                    return
                wake = s.dispatch_locked(now, gate, gate_at)
                if s.rescan_asked or self._handoff.counts()["handoff_items"]:
                    continue
                timeout = min(next_rescan - time.monotonic(), wake - now)
                if timeout > 0:
                    s.asleep_until = now + timeout
                    try:
                        s.wake.wait(timeout)
                    finally:
                        s.asleep_until = None

    def _rescan(self) -> None:
        with self._sched.lock:
            self._sched.rescan_asked = False
        keys = self.outbox.pending_keys()
        self._sched.apply_rescan({k: self.outbox.signature(k) for k in keys}, self._clock())

    def _work(self) -> None:
        while (key := self._sched.take()) is not None:
            result = Next(self._clock() + _FALLBACK_RETRY_S, True)
            try:
                with _errors.guard("delivery"):
                    result = self._steps.session(key)
            finally:
                self._finish(key, result)

    def _finish(self, key: str, result: Next) -> None:
        try:
            sig = self.outbox.signature(key)
        except OSError:  # the spool is unreadable: the call stays known, and its worker's lane
            sig = -1  # must be given back whatever the disk says

        self._sched.finish(key, sig, result, self._clock())
        if self._gate.take_recovered():  # the endpoint is back: everyone goes now
            self._steps.forget_attempts()
            with self._sched.lock:
                self._sched.release_all_locked(self._clock())
                self._sched.rescan_asked = True  # what others wrote meanwhile goes too
        s = self._sched
        with s.lock:
            if self._idle_locked():
                s.idle_cv.notify_all()

    # -- for the steps ---------------------------------------------------------------------

    def _request_timeout(self) -> float | None:
        """The time a request may take; None once the shutdown deadline has passed."""
        timeout = self._opts.request_timeout
        if self._deadline is not None:
            timeout = min(timeout, self._deadline - time.monotonic())
        if self._sched.stopping:
            return None
        return timeout if timeout > 0 else None
