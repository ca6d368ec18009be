"""Retry policy as data plus pure functions: status classes, backoff, Retry-After."""

from __future__ import annotations

import enum
import math
import random
from email.utils import parsedate_to_datetime
from typing import Final

RETRYABLE: Final = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
AUTH: Final = frozenset({401, 403})

BACKOFF_BASE_S: Final = 0.5
BACKOFF_CAP_S: Final = 60.0
AUTH_BACKOFF_BASE_S: Final = 30.0
AUTH_BACKOFF_CAP_S: Final = 300.0
# A server asking for more than this is treated as asking for this much; nothing is dropped.
RETRY_AFTER_CAP_S: Final = 600.0


class Outcome(enum.Enum):
    OK = "ok"
    RETRY = "retry"
    AUTH = "auth"
    PERMANENT = "permanent"


def classify(status: int | None) -> Outcome:
    """``None`` is a network error, a timeout or an unusable reply: always worth retrying."""
    if status is None or status in RETRYABLE:
        return Outcome.RETRY
    if 200 <= status < 300:
        return Outcome.OK
    if status in AUTH:
        return Outcome.AUTH
    # Other 5xx are the server's trouble, not the item's: retry. Other 4xx (and 1xx/3xx) won't heal.
    if status >= 500:
        return Outcome.RETRY
    return Outcome.PERMANENT


def backoff(
    attempt: int,
    rng: random.Random,
    *,
    base: float = BACKOFF_BASE_S,
    cap: float = BACKOFF_CAP_S,
) -> float:
    """Exponential backoff with full jitter; ``attempt`` counts from 0."""
    ceiling = min(cap, base * math.pow(2.0, min(max(attempt, 0), 62)))
    return rng.uniform(0.0, ceiling)


def auth_backoff(
    attempt: int, *, base: float = AUTH_BACKOFF_BASE_S, cap: float = AUTH_BACKOFF_CAP_S
) -> float:
    """A rejected key heals only by a human: retry slowly (30 s doubling to 5 min), no jitter."""
    return min(cap, base * math.pow(2.0, min(max(attempt, 0), 62)))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait per ``Retry-After``: delta-seconds or HTTP-date; ``now`` is epoch s."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return min(float(value), RETRY_AFTER_CAP_S)
    if value.replace(".", "", 1).isdigit():  # "1.5": not RFC 9110, but some servers send it
        return min(float(value), RETRY_AFTER_CAP_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    return min(max(0.0, when.timestamp() - now), RETRY_AFTER_CAP_S)


def retry_delay(
    attempt: int,
    retry_after: float | None,
    rng: random.Random,
    *,
    base: float = BACKOFF_BASE_S,
    cap: float = BACKOFF_CAP_S,
) -> float:
    """Honour the server's ``Retry-After`` when it asks for longer than our own backoff."""
    own = backoff(attempt, rng, base=base, cap=cap)
    return own if retry_after is None else max(own, retry_after)
