"""Retry policy tables: status classes, backoff bounds, Retry-After forms, breaker."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from pipecat_roark_otel.exporter._gate import Gate, GatePolicy, State
from pipecat_roark_otel.exporter._retry import (
    RETRYABLE,
    Outcome,
    auth_backoff,
    backoff,
    classify,
    parse_retry_after,
    retry_delay,
)
from pipecat_roark_otel.exporter._scheduler import Next, Scheduler


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


def test_gate_closes_after_failures_then_probes_one_at_a_time() -> None:
    gate = Gate(GatePolicy(threshold=3, probe_interval=1.0))
    for t in (0.0, 0.1, 0.2):
        assert gate.acquire(t) is None
        gate.release(Outcome.RETRY, t, answered=False, wait=None)
    assert gate.breaker_open and gate.state(0.5) == ("closed", 1.2)
    assert gate.acquire(0.5) == 1.2
    assert gate.acquire(1.2) is None  # the probe
    assert gate.acquire(1.3) is not None  # only one at a time
    gate.release(Outcome.RETRY, 1.4, answered=False, wait=5.0)  # Retry-After: 5 s
    assert gate.state(2.5) == ("closed", 6.4)
    assert gate.acquire(6.4) is None
    change = gate.release(Outcome.OK, 6.5, answered=False, wait=None)
    assert change.recovered and not change.from_auth and gate.take_recovered()
    assert not gate.take_recovered() and gate.state(6.6) == ("open", 6.6)


def test_a_shut_gate_hands_out_one_call_per_probe_however_many_wait() -> None:
    sched = Scheduler()
    sched.apply_rescan({f"k{i}": i for i in range(1000)}, 0.0)

    def look(now: float, gate: State, gate_at: float) -> int:
        with sched.lock:
            sched.dispatch_locked(now, gate, gate_at)
        return sched.counts()["in_flight"]

    # "probe" lasts until a worker claims it: every look meanwhile must not hand out more.
    assert [look(now, "probe", now) for now in (1.0, 1.001, 1.002)] == [1, 1, 1]
    probe = sched.take()
    assert probe is not None
    sched.finish(probe, 0, Next(2.0, True), 1.01)  # refused: back to wait on the gate
    assert look(1.5, "closed", 2.0) == 0
    assert look(2.0, "probe", 2.0) == 1  # the next probe
    assert look(2.0, "open", 2.0) == 1000  # it answered: everyone goes


def test_a_refused_upload_url_is_an_answer_not_an_outage() -> None:
    gate = Gate(GatePolicy(threshold=1))
    gate.release(Outcome.RETRY, 0.0, answered=True, wait=None)
    assert not gate.breaker_open


def test_auth_pause_probes_each_second_then_slows_to_the_auth_backoff() -> None:
    policy = GatePolicy(probe_interval=1.0, auth_fast_window=60.0, auth_backoff_base=30.0)
    gate = Gate(policy)
    assert gate.release(Outcome.AUTH, 0.0, answered=False, wait=None).auth_episode_began
    assert gate.auth_paused and gate.state(0.0) == ("closed", 1.0)
    assert not gate.release(Outcome.AUTH, 1.0, answered=False, wait=None).auth_episode_began
    assert gate.state(1.0) == ("closed", 2.0)
    gate.release(Outcome.AUTH, 61.0, answered=False, wait=None)
    assert gate.state(61.0) == ("closed", 91.0)
    change = gate.release(Outcome.OK, 91.0, answered=False, wait=None)
    assert change.recovered and change.from_auth and not gate.auth_paused
