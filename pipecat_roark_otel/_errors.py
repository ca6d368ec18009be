"""One guard for every entry point: log once, count, never raise into the host."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

logger: Final = logging.getLogger("pipecat_roark_otel")

_raise_internal_errors = False
_LOG_INTERVAL_S: Final = 60.0
# Guards the two dicts below; entry points run on the loop and on SDK threads.
_lock = threading.Lock()
_last_logged: dict[str, float] = {}
dropped: Counter[str] = Counter()


def set_raise_internal_errors(flag: bool) -> None:
    """Make the guard re-raise. Our own test suite sets it so bugs are never swallowed."""
    global _raise_internal_errors
    _raise_internal_errors = flag


def should_log(key: str, *, interval: float = _LOG_INTERVAL_S) -> bool:
    """Rate-limit a repeated message to once per ``interval`` per key."""
    now = time.monotonic()
    with _lock:
        last = _last_logged.get(key)
        if last is not None and now - last < interval:
            return False
        _last_logged[key] = now
        return True


def reset() -> None:
    """Forget rate limits and counts (tests start each case clean)."""
    with _lock:
        _last_logged.clear()
        dropped.clear()


def count_drop(reason: str, n: int = 1) -> None:
    with _lock:
        dropped[reason] += n


def report(where: str) -> bool:
    """Inside ``except``: count and log the internal error; True if the caller must re-raise."""
    count_drop(f"internal_error:{where}")
    if _raise_internal_errors:
        return True
    if should_log(f"guard:{where}"):
        logger.exception("pipecat-roark-otel internal error in %s; the call goes on", where)
    return False


@contextmanager
def guard(where: str) -> Iterator[None]:
    """Log an internal error once per ``where`` and carry on."""
    try:
        yield
    except Exception:
        if report(where):
            raise
