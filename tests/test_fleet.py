"""Issue 13, test group 3: a fleet through the real Collector to two bridge replicas.

Three bot processes, each running several simulated calls at once, export OTLP traces and
logs (the recording) to one Collector running ``deploy/otel-collector-fleet.yaml``; its
load-balancing exporter routes by trace id over OTLP/gRPC to two ``roark-bridge``
processes, which deliver to the local Roark. Every call arrives once, complete, with its
recording byte-exact; then again with one bridge SIGKILLed mid-run and restarted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipecat_roark_otel.devserver import LocalRoark

from .otelbin import FLEET_COLLECTOR_CONFIG, Collector, binary, free_port, tail
from .test_recording import Wav

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "fleet-bridge-token"
BOTS = 3
CALLS_PER_BOT = 3
DEADLINE_S = 180.0


class BridgeProcess:
    """``python -m pipecat_roark_otel.bridge`` on fixed ports and its own spool."""

    def __init__(self, roark: LocalRoark, spool: Path, log: Path) -> None:
        self.grpc_port, self.http_port = free_port(), free_port()
        self.spool, self.log = spool, log
        self.env = {
            **os.environ,
            "ROARK_API_KEY": roark.api_key,
            "ROARK_BASE_URL": roark.base_url,
            "ROARK_BRIDGE_TOKEN": TOKEN,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> BridgeProcess:
        args = [
            *("--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port)),
            *("--spool-dir", str(self.spool)),
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipecat_roark_otel.bridge", *args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        deadline = time.monotonic() + 60
        while not self.healthy():
            assert self.proc.poll() is None, f"bridge exited:\n{tail(self.log)}"
            assert time.monotonic() < deadline, f"bridge not healthy:\n{tail(self.log)}"
            time.sleep(0.1)
        return self

    def healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.http_port}/health", timeout=2).is_success
        except httpx.HTTPError:
            return False

    def counts(self) -> dict[str, int]:
        try:
            url = f"http://127.0.0.1:{self.http_port}/health"
            counts: dict[str, int] = httpx.get(url, timeout=2).json()["counts"]
            return counts
        except httpx.HTTPError:
            return {}

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class Fleet:
    def __init__(self, roark: LocalRoark, tmp: Path) -> None:
        self.roark, self.tmp = roark, tmp
        # One spool for both replicas: the Collector's load-balancing exporter (v0.161.0)
        # hashes a log record's trace id (hex) unlike a span's (raw bytes), so a call's
        # audio and its spans may reach different replicas (docs/OTEL.md).
        self.bridges = [
            BridgeProcess(roark, tmp / "bridge-spool", tmp / f"bridge-{i}.log") for i in (1, 2)
        ]
        endpoints = ", ".join(b.grpc_endpoint for b in self.bridges)
        self.collector = Collector(
            FLEET_COLLECTOR_CONFIG,
            tmp,
            env={
                "ROARK_BRIDGE_ENDPOINTS": f"[{endpoints}]",
                "ROARK_BRIDGE_TOKEN": TOKEN,
                "OTELCOL_STORAGE_DIR": str(tmp / "collector-queue"),
            },
        )
        self.bots: list[tuple[subprocess.Popen[bytes], Path, Path]] = []

    def start(self) -> None:
        for bridge in self.bridges:
            bridge.start()
        self.collector.start()

    def launch_bots(self) -> None:
        for i in range(BOTS):
            out, log = self.tmp / f"bot-{i}.json", self.tmp / f"bot-{i}.log"
            with log.open("ab") as sink:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        *("-m", "tests.fleet_bot"),
                        *("--collector", self.collector.otlp_grpc_endpoint),
                        *("--calls", str(CALLS_PER_BOT), "--out", str(out)),
                    ],
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                )
            self.bots.append((proc, out, log))

    def wait_for_bots(self) -> dict[str, dict[str, Any]]:
        expected: dict[str, dict[str, Any]] = {}
        for proc, out, log in self.bots:
            assert proc.wait(timeout=DEADLINE_S) == 0, f"bot failed:\n{tail(log)}"
            expected.update(json.loads(out.read_text()))
        assert len(expected) == BOTS * CALLS_PER_BOT
        return expected

    def stop(self) -> None:
        for proc, _, _ in self.bots:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.collector.stop()
        for bridge in self.bridges:
            bridge.stop()

    def diagnostics(self) -> str:
        logs = [self.collector.log, *(b.log for b in self.bridges)]
        return "\n".join(f"--- {log.name}\n{tail(log, 15)}" for log in logs)


@pytest.fixture
def fleet(roark: LocalRoark, tmp_path: Path) -> Iterator[Fleet]:
    binary("otelcol")
    f = Fleet(roark, tmp_path)
    try:
        f.start()
        yield f
    finally:
        f.stop()


def _wait_for_calls(fleet: Fleet, expected: dict[str, dict[str, Any]]) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        calls = {cid: fleet.roark.call(cid) for cid in expected}
        done = {
            cid: call
            for cid, call in calls.items()
            if call and call["ended"] and fleet.roark.wav_bytes(cid) is not None
        }
        if len(done) == len(expected):
            return done
        if time.monotonic() > deadline:
            missing = sorted(set(expected) - set(done))
            raise AssertionError(f"calls not complete: {missing}\n{fleet.diagnostics()}")
        time.sleep(0.2)


def _assert_each_call_once_complete_byte_exact(
    fleet: Fleet, expected: dict[str, dict[str, Any]], *, allow_resent: bool
) -> None:
    calls = _wait_for_calls(fleet, expected)
    for call_id, want in expected.items():
        call = calls[call_id]
        assert call["ended"]["callEndedReason"] == "agent-ended", call_id  # never orphaned
        assert call["flags"] == [], (call_id, call["flags"])  # order kept, nothing missing
        assert call["chunks"] == dict(enumerate(want["sizes"])), call_id
        assert len(call["ended"]["transcript"]) >= 2
        wav = fleet.roark.wav_bytes(call_id)
        assert wav is not None
        assert hashlib.sha256(Wav.parse(wav).pcm).hexdigest() == want["sha256"], call_id
        dups = call["duplicates"]
        if not allow_resent:
            assert dups["call-started"] == 0 and dups["call-ended"] == 0, (call_id, dups)
            assert dups["chunks"] == {}, (call_id, dups)
        assert dups["chunks_replaced"] == {}, (call_id, dups)  # a resend is the same bytes
    # Nobody else's calls: the Collector routed each call to exactly one bridge.
    ours = {c["pipecatCallId"] for c in fleet.roark.calls()}
    assert ours == set(expected)


def test_fleet_every_call_once_complete_byte_exact(fleet: Fleet) -> None:
    fleet.launch_bots()
    expected = fleet.wait_for_bots()
    _assert_each_call_once_complete_byte_exact(fleet, expected, allow_resent=False)
    per_bridge = [b.counts().get("spans", 0) for b in fleet.bridges]
    assert all(n > 0 for n in per_bridge), per_bridge  # both replicas took a share


def test_fleet_survives_a_bridge_sigkill_mid_run(fleet: Fleet) -> None:
    fleet.launch_bots()
    deadline = time.monotonic() + DEADLINE_S
    while True:  # mid-run: the first replica to hold some audio of calls in flight
        busy = [b for b in fleet.bridges if b.counts().get("chunks", 0) >= 2]
        if busy:
            victim = busy[0]
            break
        assert time.monotonic() < deadline, fleet.diagnostics()
        time.sleep(0.05)
    victim.kill()
    victim.start()  # same ports, same spool: what it had stored is delivered from disk
    expected = fleet.wait_for_bots()
    _assert_each_call_once_complete_byte_exact(fleet, expected, allow_resent=True)
    log = victim.log.read_text(errors="replace")
    assert len(re.findall(r"roark bridge: OTLP/gRPC", log)) == 2  # it really restarted


def test_the_docs_show_the_collector_config_this_test_runs() -> None:
    docs = (ROOT / "docs" / "OTEL.md").read_text()
    block = docs.split("<!-- fleet-collector-config -->\n```yaml\n")[1]
    block = block.split("```\n<!-- /fleet-collector-config -->")[0]
    assert block == FLEET_COLLECTOR_CONFIG.read_text()
