"""The send gate: an auth pause and a breaker that probe a failing endpoint one request at a time.

While Roark is down (or refuses the key) no call's own backoff grows: one probe
goes out about once a second (later if ``Retry-After`` asks), everything else
waits on the gate, and the first good answer opens it for all at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Final, Literal

from ._retry import AUTH_BACKOFF_BASE_S, AUTH_BACKOFF_CAP_S, RETRY_AFTER_CAP_S, Outcome
from ._retry import auth_backoff as _auth_backoff

State = Literal["open", "probe", "closed"]
PROBE_INTERVAL_S: Final = 1.0
AUTH_FAST_PROBES_S: Final = 60.0  # a key refused this long is probed at the slow auth backoff


@dataclass(frozen=True, slots=True)
class GatePolicy:
    threshold: int = 8  # failures in a row that close the gate
    probe_interval: float = PROBE_INTERVAL_S
    auth_fast_window: float = AUTH_FAST_PROBES_S
    auth_backoff_base: float = AUTH_BACKOFF_BASE_S
    auth_backoff_cap: float = AUTH_BACKOFF_CAP_S


@dataclass(frozen=True, slots=True)
class Change:
    """What a finished request did to the gate, for the caller to log or act on."""

    auth_episode_began: bool = False
    recovered: bool = False
    from_auth: bool = False


class Gate:
    """Thread-safe; callers never hold another lock while calling in."""

    def __init__(self, policy: GatePolicy) -> None:
        self._policy = policy
        self._lock = threading.Lock()  # guards every field below
        self._failures = 0
        self._down_since: float | None = None
        self._auth_since: float | None = None
        self._slow_auth_probes = 0
        self._next_probe = 0.0
        self._probing = False
        self._recovered = False

    def state(self, now: float) -> tuple[State, float]:
        """Whether requests may go out now: open, one probe, or closed until the time given."""
        with self._lock:
            return self._state_locked(now)

    def _state_locked(self, now: float) -> tuple[State, float]:
        if self._down_since is None and self._auth_since is None:
            return "open", now
        if self._probing:
            return "closed", now + self._policy.probe_interval
        if now < self._next_probe:
            return "closed", self._next_probe
        return "probe", now

    def acquire(self, now: float) -> float | None:
        """Claim the right to send now (the probe, if the gate is shut); else when to ask again."""
        with self._lock:
            state, at = self._state_locked(now)
            if state == "closed":
                return at
            if state == "probe":
                self._probing = True
            return None

    def release(
        self, outcome: Outcome, now: float, *, answered: bool, wait: float | None
    ) -> Change:
        """Feed the gate with how a request went; ``wait`` is the server's Retry-After."""
        with self._lock:
            self._probing = False
            if outcome is Outcome.AUTH:
                return self._auth_failed_locked(now)
            if outcome is Outcome.RETRY and not answered:
                self._failures += 1
                if self._down_since is not None or self._failures >= self._policy.threshold:
                    self._down_since = self._down_since or now
                    gap = max(self._policy.probe_interval, min(wait or 0.0, RETRY_AFTER_CAP_S))
                    self._next_probe = now + gap
                return Change()
            was_auth = self._auth_since is not None
            recovered = was_auth or self._down_since is not None
            self._failures = 0
            self._down_since = self._auth_since = None
            self._slow_auth_probes = 0
            self._recovered = self._recovered or recovered
            return Change(recovered=recovered, from_auth=was_auth)

    def _auth_failed_locked(self, now: float) -> Change:
        began = self._auth_since is None
        if began:
            self._auth_since = now
        assert self._auth_since is not None
        p = self._policy
        if now - self._auth_since < p.auth_fast_window:
            gap = p.probe_interval
        else:  # a human has to fix the key: back off for real
            gap = _auth_backoff(
                self._slow_auth_probes, base=p.auth_backoff_base, cap=p.auth_backoff_cap
            )
            self._slow_auth_probes += 1
        self._next_probe = now + gap
        return Change(auth_episode_began=began)

    def take_recovered(self) -> bool:
        """True once after the gate opened again: waiting calls may all go now."""
        with self._lock:
            recovered, self._recovered = self._recovered, False
            return recovered

    @property
    def shut(self) -> bool:
        """Roark is down or refuses the key: only probes go out."""
        with self._lock:
            return self._down_since is not None or self._auth_since is not None

    @property
    def auth_paused(self) -> bool:
        with self._lock:
            return self._auth_since is not None

    @property
    def breaker_open(self) -> bool:
        with self._lock:
            return self._down_since is not None
