"""`roark-bridge` as its operators run it: health, SIGTERM drain, secrets out of its output."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from pipecat_roark_otel.devserver import LocalRoark

from . import otlp_build as ob
from .support import wait_until

SECRET = "rk_test_BRIDGEkeyZq81"
TOKEN = "bridge-token-Kx93"


def test_the_process_serves_drains_on_sigterm_and_never_prints_secrets(
    roark: LocalRoark, tmp_path: Path
) -> None:
    roark.set_api_keys([SECRET])
    env = {
        **os.environ,
        "ROARK_API_KEY": SECRET,
        "ROARK_BASE_URL": roark.base_url,
        "ROARK_BRIDGE_TOKEN": TOKEN,
    }
    args = ["--grpc-port", "0", "--http-port", "0", "--spool-dir", str(tmp_path / "spool")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipecat_roark_otel.bridge", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = ""
        while "roark bridge:" not in banner and (line := proc.stdout.readline()):
            banner = line  # Pipecat's own import banner may come first
        match = re.search(r"OTLP/HTTP on (http://\S+?)[, ]", banner)
        assert match, banner
        url = match.group(1)
        assert "bearer token required" in banner
        assert httpx.get(f"{url}/health").json()["status"] == "ok"

        call_id = f"proc-{uuid.uuid4()}"
        body = ob.traces(ob.started(call_id), ob.call_end(call_id)).SerializeToString()
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-protobuf"}
        assert httpx.post(f"{url}/v1/traces", content=body, headers=headers).status_code == 200
        wait_until(lambda: roark.call(call_id) is not None, what="the call at Roark")

        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    output = banner + out
    assert "drained" in output
    assert SECRET not in output and TOKEN not in output
    assert roark.wait_for_call_ended(call_id)["ended"]["callEndedReason"] == "agent-ended"


def test_a_bad_setting_is_a_clear_exit(tmp_path: Path) -> None:
    env = {**os.environ, "ROARK_API_KEY": SECRET}
    env.pop("ROARK_BRIDGE_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-m", "pipecat_roark_otel.bridge", "--host", "0.0.0.0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "ROARK_BRIDGE_TOKEN" in done.stderr
    assert SECRET not in done.stderr + done.stdout
