"""Each bench script runs end to end at tiny sizes (our side only), so they don't rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pipecat_roark", reason="bench extra not installed: pip install -e '.[bench]'")

ROOT = Path(__file__).resolve().parent.parent


def _run(module: str, *args: str) -> dict:
    name = f"smoke-{module}"
    cmd = [sys.executable, "-m", f"bench.{module}", "--quick", "--out", name, *args]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads((ROOT / "bench" / "results" / f"{name}.json").read_text())


def test_overhead() -> None:
    doc = _run("overhead", "--variants", "none,noop,ours")
    ours = doc["results"]["ours"]
    assert ours["frames"] > 500
    assert ours["us_per_frame"] > 0
    assert ours["extra_us"] is not None
    # None when the no-op's extra came out at or below zero: noise on a loaded machine.
    assert "ratio_to_noop_extra" in ours
    # The loop thread's CPU is part of the process's.
    assert 0 < ours["loop_us"] <= ours["us_per_frame"]
    # Both of our calls (warm-up and round) were delivered between rounds: no backlog left
    # for our delivery threads to work on during other variants' rounds.
    assert doc["delivery_url"] == "bench/_receiver.py"
    assert doc["delivery"] == {"calls_completed": 2, "outbox_depth": 0, "pending": 0}


def test_memory() -> None:
    doc = _run("memory", "--variants", "noop,ours,ours_steps")
    rows = {r["variant"]: r for r in doc["rows"]}
    ours, steps = rows["ours"], rows["ours_steps"]
    assert ours["calls"] == 5
    assert ours["frames"] > 0
    assert ours["census_midway"]["threads"] >= 1
    # The longest step of ours is timed both ways, and only in the timed run.
    assert ours["worst_step_ms"] is None
    assert steps["worst_step_ms"] > 0 and steps["worst_step_wall_ms"] > 0
    assert steps["worst_step_at"] and steps["worst_step_wall_at"]


def test_loop_lag() -> None:
    doc = _run("loop_lag", "--variants", "none,ours", "--calls", "2")
    assert doc["calls"] == 2
    assert doc["results"]["ours"]["ticks"] > 0


def test_export() -> None:
    doc = _run("export")
    run = doc["throughput"]
    assert run["flushed"]
    assert run["received"] == run["delivered"] == run["calls"] == run["waiting_in_spool"]
    assert run["receiver"]["repeats"] == 0
    roark = doc["throughput_local_roark"]
    assert roark["roark_lists_ended"] == roark["calls"]
    for top in (doc["receiver_ceiling"], doc["local_roark_ceiling"]):
        assert top["ok_requests"] == top["requests"] > 0
    assert doc["latency"]["whole_call"]["median_ms"] > 0


def test_outage() -> None:
    doc = _run("outage")
    (result,) = doc["results"]
    assert result["calls"] == 100 and result["pending"] == 100  # all still waiting
    assert 0 <= result["cpu_ms_per_s"] < 100


def test_paired_ratio_interval() -> None:
    from bench.overhead import _judge, _paired_ratio

    # (ours, none, noop) per round: the machine drifts, the extras do not.
    steady = [(100.0 + d + 12, 100.0 + d, 100.0 + d + 10) for d in (0, 9, -4, 20, 3, -7, 11)]
    point, interval = _paired_ratio(steady)
    assert point == pytest.approx(1.2)
    assert interval == pytest.approx([1.2, 1.2])
    assert _judge(interval).startswith("meets")
    # One disturbed round moves neither the point nor the interval past the target.
    point, interval = _paired_ratio([*steady[:-1], (190.0, 100.0, 110.0)])
    assert point == pytest.approx(1.2)
    assert interval is not None and interval[1] <= 1.3
    noisy = [(100 + e, 100.0, 100 + n) for e, n in ((12, 10), (30, 8), (5, 12), (15, 9), (9, 11))]
    interval = _paired_ratio(noisy)[1]
    assert interval is not None and "inside" in _judge(interval)
    assert _paired_ratio(steady[:3])[1] is None  # too few rounds for an interval
