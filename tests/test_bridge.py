"""Fleet path: a bot exports OTLP; the bridge receives it and delivers the call to Roark."""

from __future__ import annotations

from pathlib import Path

import httpx
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from pipecat_roark_otel import RoarkObserver
from pipecat_roark_otel.bridge import OTLPBridge
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter
from pipecat_roark_otel.simulation import run_simulated_call

from .conftest import Otel


async def test_call_crosses_the_bridge(roark: LocalRoark, otel: Otel, tmp_path: Path) -> None:
    exporter = RoarkSpanExporter(
        api_key=roark.api_key, base_url=roark.base_url, spool_dir=tmp_path / "bridge-spool"
    )
    bridge = OTLPBridge(exporter, port=0).start()
    try:
        # The bot host: OTLP only, no Roark exporter in process.
        otel.add(BatchSpanProcessor(OTLPSpanExporter(endpoint=bridge.endpoint)))
        observer = RoarkObserver(agent_id="fleet-bot", api_key="unused-on-the-bot")
        await run_simulated_call(observer, audio_out_sample_rate=16_000)
        assert otel.force_flush()
        assert exporter.force_flush(15_000)
        call = roark.wait_for_call_ended(observer.conversation_id, timeout=15)
        ended = call["ended"]
        assert call["started"]["agentId"] == "fleet-bot"
        assert [t["role"] for t in ended["transcript"]][:2] == ["assistant", "user"]
        assert ended["toolCalls"][0]["name"] == "lookup_order"
        assert ended["callEndedReason"] == "agent-ended"
    finally:
        bridge.stop()
        exporter.shutdown()


def test_bridge_rejects_what_is_not_otlp(tmp_path: Path) -> None:
    exporter = RoarkSpanExporter(api_key="k", base_url="http://127.0.0.1:9", spool_dir=tmp_path)
    bridge = OTLPBridge(exporter, port=0).start()
    try:
        bad = httpx.post(bridge.endpoint, content=b"\xff\x00not protobuf")
        assert bad.status_code == 400
        assert httpx.post(bridge.endpoint.replace("/v1/traces", "/v1/logs")).status_code == 404
        assert httpx.post(bridge.endpoint, content=b"").status_code == 200
    finally:
        bridge.stop()
        exporter.shutdown()
