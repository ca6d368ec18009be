"""Which call is due: a heap of calls by due time, handed to workers one call at a time.

A call is in exactly one place: waiting in the heap, ready for a worker, or in
flight. Writes that land while it is in flight make it go again at once.

Lanes: only ``lanes`` workers work at once, plus one for each worker whose request has
waited on the network longer than ``slow_request``. Delivery is CPU work under one GIL
when Roark answers fast, and more threads then only fight over it; when Roark is far
or slow, the waiting workers make room and all of them send at once.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

from ._gate import State

_FAR: Final = 3600.0


@dataclass(frozen=True, slots=True)
class Next:
    """How a session left its call: look again at ``when``; ``pending`` if work is deliverable."""

    when: float | None
    pending: bool
    backoff: bool = False  # a retry delay: new writes for the call must not cut it short


DONE: Final = Next(None, False)


class Scheduler:
    """``lock`` guards every field; three conditions share it so a wake-up reaches only
    the threads it concerns. Nothing does I/O while holding it."""

    def __init__(self, *, lanes: int = 1, slow_request: float = 0.005) -> None:
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)  # the dispatching thread waits here
        self.work_cv = threading.Condition(self.lock)  # workers wait for ready calls
        self.idle_cv = threading.Condition(self.lock)  # force_flush waits here
        self.dirty: set[str] = set()  # call keys touched by our own writers
        self.rescan_asked = True
        self.rescans = 0
        self.stopping = False
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        self._pending: set[str] = set()  # keys with deliverable work (incl. backing off)
        self._sigs: dict[str, int | None] = {}
        self._ready: deque[str] = deque()
        self._in_flight: set[str] = set()
        self._redo: set[str] = set()  # touched while in flight: look again at once
        self._backoff_until: dict[str, float] = {}
        # The call handed out to probe a shut gate. Until it is back no other call goes: the
        # gate reads "probe" until its worker claims the probe, and handing out a call per
        # look meanwhile cycled every waiting call through a session each probe interval.
        self._probe: str | None = None
        self._lanes = max(1, lanes)
        self._slow = slow_request
        self._working = 0  # workers between take() and finish()
        self._sending: dict[int, float] = {}  # worker thread -> when its request went out
        self._standby = False  # a worker waits, timed, for a lane (see take)
        # While the dispatching thread waits on ``wake``: when it means to look again. None
        # while it runs: it dispatches before it next waits, so waking it costs a hand-over
        # of the GIL for nothing.
        self.asleep_until: float | None = None

    # -- any thread ----------------------------------------------------------------------

    def mark_dirty(self, key: str | None) -> None:
        """Something was written for call ``key`` (None: look at the whole outbox)."""
        with self.lock:
            if key is None:
                self.rescan_asked = True
            else:
                self.dirty.add(key)
            if self.asleep_until is not None:
                self.wake.notify()

    def notify_all_locked(self) -> None:
        for cv in (self.wake, self.work_cv, self.idle_cv):
            cv.notify_all()

    def idle_locked(self) -> bool:
        return not (
            self.dirty or self._pending or self._in_flight or self._ready or self.rescan_asked
        )

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {
                "pending": len(self._pending) + len(self.dirty),
                "in_flight": len(self._in_flight),
            }

    # -- the dispatching thread ----------------------------------------------------------

    def has_pending_locked(self) -> bool:
        return bool(self._pending or self.dirty)

    def apply_rescan(self, sigs: dict[str, int | None], now: float) -> None:
        """What the disk holds now: calls whose folder changed are due."""
        with self.lock:
            for key, sig in sigs.items():
                if key not in self._sigs or self._sigs[key] != sig:
                    self._sigs[key] = sig
                    self._schedule_locked(key, now, pending=True)
            for key in set(self._sigs) - set(sigs):
                if key not in self._in_flight:
                    self._forget_locked(key)
            self.rescans += 1
            self.idle_cv.notify_all()

    def dispatch_locked(self, now: float, gate: State, gate_at: float) -> float:
        """Move due calls to the workers; returns when to look again."""
        for key in self.dirty:
            self._schedule_locked(key, now, pending=True)
        self.dirty.clear()
        if gate == "probe" and self._probe is not None:
            gate, gate_at = "closed", now + _FAR  # its finish() wakes us
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
            if gate == "probe":
                self._probe = key
        if self._ready:
            self.work_cv.notify(min(len(self._ready), self._lanes))
        wake = self._heap[0][0] if self._heap else now + _FAR
        return max(gate_at, wake) if gate == "closed" else wake

    def release_all_locked(self, now: float) -> None:
        """The gate opened again: every waiting call is due now, whatever its backoff said."""
        self._backoff_until.clear()
        for key in list(self._pending):
            self._schedule_locked(key, now, pending=True)
        self.wake.notify()

    # -- workers -------------------------------------------------------------------------

    def take(self) -> str | None:
        """The next ready call, blocking; None once stopping.

        While calls wait for a lane, one worker (the standby) wakes to see whether a
        request out there has turned slow; the others sleep until woken. Polling from
        every idle worker cost the GIL a hand-over per worker every ``slow_request``.
        """
        with self.lock:
            while not self.stopping:
                if not self._ready:
                    self.work_cv.wait()
                    continue
                wait = self._lane_free_locked()
                if wait is None:
                    self._working += 1
                    key = self._ready.popleft()
                    if self._ready and not self._standby:
                        self.work_cv.notify()  # someone must watch for the next lane
                    return key
                if self._standby:
                    self.work_cv.wait()
                    continue
                self._standby = True
                try:
                    self.work_cv.wait(wait)
                finally:
                    self._standby = False
            return None

    @contextmanager
    def sending(self) -> Iterator[None]:
        """Around a worker's request: once it has waited ``slow_request``, its lane is free."""
        me = threading.get_ident()
        with self.lock:
            self._sending[me] = time.monotonic()
        try:
            yield
        finally:
            with self.lock:
                del self._sending[me]

    def _lane_free_locked(self) -> float | None:
        """None if a lane is free; else how long until a request in flight counts as slow."""
        now = time.monotonic()
        soonest = self._slow
        waiting = 0
        for since in self._sending.values():
            left = since + self._slow - now
            if left <= 0:
                waiting += 1
            else:
                soonest = min(soonest, left)
        return None if self._working - waiting < self._lanes else soonest

    def finish(self, key: str, sig: int | None, result: Next, now: float) -> None:
        with self.lock:
            self._working -= 1  # no wake-up for its lane: this worker takes the next call itself
            self._in_flight.discard(key)
            if key == self._probe:
                self._probe = None
            if sig is None and result.when is None:
                self._forget_locked(key)  # nothing new for the dispatcher: let it sleep
            else:
                self._sigs[key] = sig
                if result.backoff and result.when is not None:
                    self._backoff_until[key] = result.when
                else:
                    self._backoff_until.pop(key, None)
                if key in self._redo:
                    result = Next(now, True)
                when = now + _FAR if result.when is None else result.when
                self._schedule_locked(key, when, pending=result.pending)
                if self.asleep_until is not None and when < self.asleep_until:
                    self.wake.notify()
            self._redo.discard(key)
            self.idle_cv.notify_all()

    # -- internals -----------------------------------------------------------------------

    def _forget_locked(self, key: str) -> None:
        self._sigs.pop(key, None)
        self._due.pop(key, None)
        self._pending.discard(key)
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
