"""Switchable faults: what the next ingest request should suffer, decided under one lock."""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

Endpoint = Literal["webhook", "presign", "upload"]
ENDPOINTS: tuple[str, ...] = get_args(Endpoint)


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What to do to one request: sleep, then drop it or answer with an injected status."""

    latency_s: float = 0.0
    drop: bool = False
    status: int | None = None
    retry_after: float | None = None
    retry_after_as_date: bool = False


@dataclass(slots=True)
class _Rule:
    endpoint: str | None
    remaining: int | None  # None: a fractional rule, never used up
    p: float
    rng: random.Random | None
    status: int | None  # None: drop the connection
    retry_after: float | None = None
    retry_after_as_date: bool = False

    def matches(self, endpoint: str) -> bool:
        return self.endpoint is None or self.endpoint == endpoint

    def fires(self) -> bool:
        if self.remaining is not None:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
            return True
        assert self.rng is not None
        return self.rng.random() < self.p

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "drop" if self.status is None else "fail",
            "endpoint": self.endpoint,
            "remaining": self.remaining,
            "p": None if self.remaining is not None else self.p,
            "status": self.status,
            "retry_after": self.retry_after,
        }


def _check_endpoint(endpoint: str | None) -> None:
    if endpoint is not None and endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint must be one of {ENDPOINTS} or None, got {endpoint!r}")


def _check_status(status: int) -> None:
    if not 400 <= status <= 599:
        raise ValueError(f"injected status must be a 4xx/5xx, got {status}")


def _check_p(p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be within [0, 1], got {p}")


class Faults:
    """Thread-safe fault switches for LocalRoark; also driven by ``POST /_dev/faults``.

    Count rules are consumed in the order they were added; the first firing rule wins.
    Faults apply to the ingest endpoints (``webhook``, ``presign``, ``upload``);
    ``down`` drops every request except ``/_dev``.
    """

    def __init__(self) -> None:
        # Guards every field below: handler threads decide while tests reconfigure.
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._latency: dict[str | None, float] = {}
        self._omit_upload_url: int | None = 0  # None: until cleared
        self._expire_urls = False
        self._down = False

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        *,
        endpoint: Endpoint | None = None,
        retry_after: float | None = None,
        retry_after_as_date: bool = False,
    ) -> None:
        """Answer the next ``n`` (matching) requests with ``status`` (+ ``Retry-After``)."""
        _check_endpoint(endpoint)
        _check_status(status)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        rule = _Rule(endpoint, n, 1.0, None, status, retry_after, retry_after_as_date)
        with self._lock:
            self._rules.append(rule)

    def fail_fraction(
        self,
        p: float,
        status: int = 503,
        *,
        endpoint: Endpoint | None = None,
        retry_after: float | None = None,
        seed: int = 0,
    ) -> None:
        """Answer a fraction ``p`` of requests with ``status``; seeded, so runs repeat."""
        _check_endpoint(endpoint)
        _check_status(status)
        _check_p(p)
        rule = _Rule(endpoint, None, p, random.Random(seed), status, retry_after)
        with self._lock:
            self._rules.append(rule)

    def drop_next(self, n: int = 1, *, endpoint: Endpoint | None = None) -> None:
        """Close the connection of the next ``n`` requests without any response."""
        _check_endpoint(endpoint)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        with self._lock:
            self._rules.append(_Rule(endpoint, n, 1.0, None, None))

    def drop_fraction(self, p: float, *, endpoint: Endpoint | None = None, seed: int = 0) -> None:
        """Close the connection of a fraction ``p`` of requests; seeded."""
        _check_endpoint(endpoint)
        _check_p(p)
        with self._lock:
            self._rules.append(_Rule(endpoint, None, p, random.Random(seed), None))

    def set_latency(self, seconds: float, *, endpoint: Endpoint | None = None) -> None:
        """Sleep ``seconds`` before handling each (matching) request; 0 removes it."""
        _check_endpoint(endpoint)
        if seconds < 0:
            raise ValueError(f"latency must be >= 0, got {seconds}")
        with self._lock:
            self._latency[endpoint] = seconds

    def presign_without_upload_url(self, n: int | None = None) -> None:
        """Reply to the next ``n`` presign requests (all, if None) without ``uploadUrl``."""
        if n is not None and n < 1:
            raise ValueError(f"n must be >= 1 or None, got {n}")
        with self._lock:
            self._omit_upload_url = n

    def expire_urls(self, on: bool = True) -> None:
        """Issue presigned URLs that have already expired."""
        with self._lock:
            self._expire_urls = on

    def set_down(self, down: bool = True) -> None:
        """While down, every request except ``/_dev`` has its connection dropped."""
        with self._lock:
            self._down = down

    @property
    def is_down(self) -> bool:
        with self._lock:
            return self._down

    def clear(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._rules.clear()
            self._latency.clear()
            self._omit_upload_url = 0
            self._expire_urls = False
            self._down = False

    def snapshot(self) -> dict[str, Any]:
        """The active faults, as served by ``GET /_dev/faults``."""
        with self._lock:
            return {
                "rules": [r.describe() for r in self._rules if r.remaining != 0],
                "latency": {k or "*": v for k, v in self._latency.items() if v},
                "presign_without_upload_url": (
                    True if self._omit_upload_url is None else self._omit_upload_url
                ),
                "expire_urls": self._expire_urls,
                "down": self._down,
            }

    def apply(self, spec: Mapping[str, Any]) -> None:
        """Add the faults described by a ``POST /_dev/faults`` body; ValueError if malformed."""
        parsed = FaultSpec.model_validate(spec)
        if (f := parsed.fail_next) is not None:
            self.fail_next(
                f.n,
                f.status,
                endpoint=f.endpoint,
                retry_after=f.retry_after,
                retry_after_as_date=f.retry_after_as_date,
            )
        if (ff := parsed.fail_fraction) is not None:
            self.fail_fraction(
                ff.p, ff.status, endpoint=ff.endpoint, retry_after=ff.retry_after, seed=ff.seed
            )
        if (d := parsed.drop_next) is not None:
            self.drop_next(d.n, endpoint=d.endpoint)
        if (df := parsed.drop_fraction) is not None:
            self.drop_fraction(df.p, endpoint=df.endpoint, seed=df.seed)
        if (lat := parsed.latency) is not None:
            self.set_latency(lat.seconds, endpoint=lat.endpoint)
        if parsed.presign_without_upload_url is not None:
            omit = parsed.presign_without_upload_url
            if omit is True:
                self.presign_without_upload_url(None)
            elif omit is False:
                with self._lock:
                    self._omit_upload_url = 0
            else:
                self.presign_without_upload_url(omit)
        if parsed.expire_urls is not None:
            self.expire_urls(parsed.expire_urls)
        if parsed.down is not None:
            self.set_down(parsed.down)

    def decide(self, endpoint: str) -> FaultDecision:
        """Consume and return the fault for one request to ``endpoint``."""
        with self._lock:
            if self._down:
                return FaultDecision(drop=True)
            latency = self._latency.get(endpoint, 0.0) + self._latency.get(None, 0.0)
            fired = next((r for r in self._rules if r.matches(endpoint) and r.fires()), None)
            self._rules = [r for r in self._rules if r.remaining != 0]
            if fired is None:
                return FaultDecision(latency_s=latency)
            if fired.status is None:
                return FaultDecision(latency_s=latency, drop=True)
            return FaultDecision(
                latency_s=latency,
                status=fired.status,
                retry_after=fired.retry_after,
                retry_after_as_date=fired.retry_after_as_date,
            )

    def take_presign_faults(self) -> tuple[bool, bool]:
        """(omit uploadUrl, expire the URL) for one presign reply; consumes a counted omit."""
        with self._lock:
            omit = self._omit_upload_url is None or self._omit_upload_url > 0
            if self._omit_upload_url:
                self._omit_upload_url -= 1
            return omit, self._expire_urls


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _FailNext(_Spec):
    n: StrictInt = Field(default=1, ge=1)
    status: StrictInt = Field(default=503, ge=400, le=599)
    endpoint: Endpoint | None = None
    retry_after: float | None = Field(default=None, ge=0)
    retry_after_as_date: StrictBool = False


class _FailFraction(_Spec):
    p: float = Field(ge=0, le=1)
    status: StrictInt = Field(default=503, ge=400, le=599)
    endpoint: Endpoint | None = None
    retry_after: float | None = Field(default=None, ge=0)
    seed: StrictInt = 0


class _DropNext(_Spec):
    n: StrictInt = Field(default=1, ge=1)
    endpoint: Endpoint | None = None


class _DropFraction(_Spec):
    p: float = Field(ge=0, le=1)
    endpoint: Endpoint | None = None
    seed: StrictInt = 0


class _Latency(_Spec):
    seconds: float = Field(ge=0)
    endpoint: Endpoint | None = None


class FaultSpec(_Spec):
    """The JSON accepted by ``POST /_dev/faults``; keys mirror the ``Faults`` methods."""

    fail_next: _FailNext | None = None
    fail_fraction: _FailFraction | None = None
    drop_next: _DropNext | None = None
    drop_fraction: _DropFraction | None = None
    latency: _Latency | None = None
    presign_without_upload_url: StrictBool | StrictInt | None = None
    expire_urls: StrictBool | None = None
    down: StrictBool | None = None
