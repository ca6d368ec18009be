"""Retry policy tables: status classes, backoff bounds, Retry-After forms, breaker."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from pipecat_roark_otel.exporter._retry import (
    RETRYABLE,
    CircuitBreaker,
    Outcome,
    auth_backoff,
    backoff,
    classify,
    parse_retry_after,
    retry_delay,
)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.OK),
        (201, Outcome.OK),
        (204, Outcome.OK),
        (None, Outcome.RETRY),
        (408, Outcome.RETRY),
        (409, Outcome.RETRY),
        (425, Outcome.RETRY),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (502, Outcome.RETRY),
        (503, Outcome.RETRY),
        (504, Outcome.RETRY),
        (507, Outcome.RETRY),
        (401, Outcome.AUTH),
        (403, Outcome.AUTH),
        (400, Outcome.PERMANENT),
        (404, Outcome.PERMANENT),
        (413, Outcome.PERMANENT),
        (422, Outcome.PERMANENT),
        (301, Outcome.PERMANENT),
    ],
)
def test_classify(status: int | None, outcome: Outcome) -> None:
    assert classify(status) is outcome


def test_retryable_set_is_the_contract() -> None:
    assert frozenset({408, 409, 425, 429, 500, 502, 503, 504}) == RETRYABLE


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(0, 0.5), (1, 1.0), (3, 4.0), (7, 60.0), (500, 60.0)]
)
def test_backoff_full_jitter_within_cap(attempt: int, ceiling: float) -> None:
    rng = random.Random(7)
    draws = [backoff(attempt, rng) for _ in range(200)]
    assert all(0.0 <= d <= ceiling for d in draws)
    assert max(draws) > ceiling * 0.8  # full jitter spans the range


@pytest.mark.parametrize(
    ("attempt", "seconds"), [(0, 30.0), (1, 60.0), (2, 120.0), (3, 240.0), (4, 300.0), (50, 300.0)]
)
def test_auth_backoff_is_slow_and_capped(attempt: int, seconds: float) -> None:
    assert auth_backoff(attempt) == seconds


NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("0", 0.0),
        ("7", 7.0),
        (" 12 ", 12.0),
        ("99999", 600.0),
        ("-3", None),
        ("1.5", 1.5),
        ("1.2.3", None),
        ("nan", None),
        ("soon", None),
        (format_datetime(datetime(2025, 1, 2, 3, 4, 35, tzinfo=UTC), usegmt=True), 30.0),
        ("Thu, 02 Jan 2025 03:04:00 GMT", 0.0),  # in the past: go now
        ("Thu, 02 Jan 2025 03:04:15 GMT", 10.0),
        ("Thu, 02 Jan 2025 03:04:15", None),  # no zone: not an HTTP-date
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_retry_delay_honours_longer_retry_after() -> None:
    rng = random.Random(1)
    assert retry_delay(0, 20.0, rng) == 20.0
    assert retry_delay(0, None, rng) <= 0.5
    assert retry_delay(10, 0.0, rng) <= 60.0


def test_breaker_opens_cools_down_and_half_opens_once() -> None:
    b = CircuitBreaker(threshold=3, cooldown=10.0)
    for t in (0.0, 1.0):
        assert b.allow(t)
        b.record_failure(t)
    assert not b.is_open
    b.record_failure(2.0)
    assert b.is_open
    assert not b.allow(5.0)
    assert b.retry_at(5.0) == 12.0
    assert b.allow(12.0)  # the one half-open try
    assert not b.allow(12.5)
    b.record_failure(13.0)  # probe failed: open again from now
    assert not b.allow(20.0)
    assert b.allow(23.0)
    b.record_success()
    assert not b.is_open and b.allow(23.1) and b.allow(23.2)


def test_breaker_probe_can_be_released_without_a_verdict() -> None:
    b = CircuitBreaker(threshold=1, cooldown=1.0)
    b.record_failure(0.0)
    assert b.allow(2.0)
    b.release_probe()
    assert b.allow(2.0)
