"""No SDK anywhere: the observer alone delivers. SDK without our exporter: one warning."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipecat_roark_otel import RoarkObserver
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.simulation import Script, run_simulated_call

from .conftest import Otel

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pipecat_roark_otel import RoarkObserver
    from pipecat_roark_otel.simulation import DEFAULT_SCRIPT, Script, run_simulated_call

    async def main():
        observer = RoarkObserver(
            agent_id="zero-config", api_key=sys.argv[1], base_url=sys.argv[2],
            conversation_id="zero-config-call",
        )
        script = Script(DEFAULT_SCRIPT.exchanges[:1], greeting="Hi there", speed=8)
        await run_simulated_call(observer, script=script, enable_tracing=True)

    asyncio.run(main())
    """
)


def test_observer_alone_delivers_without_any_sdk(roark: LocalRoark, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ROARK_"))}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, roark.api_key, roark.base_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    call = roark.wait_for_call_ended("zero-config-call", timeout=30)
    assert call["started"]["agentId"] == "zero-config"
    contents = [t["content"] for t in call["ended"]["transcript"]]
    assert contents[0] == "Hi there"
    assert call["ended"]["recordingSampleRate"] == 24_000
    # The spool went to the platform cache dir and was emptied by delivery.
    spool = tmp_path / "cache" / "pipecat-roark-otel" / "spool"
    assert spool.is_dir()
    assert not any(spool.glob("*/v1/calls/*"))


async def test_sdk_provider_without_our_exporter_warns_once(
    otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    observer = RoarkObserver(agent_id="a", api_key="rk_test_x", base_url="http://127.0.0.1:9")
    with caplog.at_level(logging.WARNING, logger="pipecat_roark_otel"):
        await run_simulated_call(observer, script=Script((), greeting="Hello", speed=8))
    warnings = [r for r in caplog.records if "No RoarkSpanExporter" in r.getMessage()]
    assert len(warnings) == 1
    assert observer.conversation_id in warnings[0].getMessage()
    # The call is still a full OTel record for the user's other exporters.
    assert any(s.name == "roark.call" for s in otel.spans())
