"""Fleet path: a bot exports OTLP (gRPC or HTTP); the bridge stores it and delivers to Roark."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from pipecat_roark_otel import RoarkObserver
from pipecat_roark_otel.bridge import RoarkBridge
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.simulation import run_simulated_call

from .conftest import TOKEN, BridgeFactory, Otel


def _otlp_exporter(bridge: RoarkBridge, protocol: str) -> SpanExporter:
    if protocol == "grpc":
        return GrpcSpanExporter(
            endpoint=bridge.grpc_endpoint,
            insecure=True,
            headers={"authorization": f"Bearer {TOKEN}"},
        )
    return HttpSpanExporter(
        endpoint=f"{bridge.http_endpoint}/v1/traces",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_call_crosses_the_bridge(
    protocol: str, roark: LocalRoark, otel: Otel, make_bridge: BridgeFactory
) -> None:
    bridge = make_bridge()
    # The bot host: OTLP only, no Roark exporter in process.
    otel.add(BatchSpanProcessor(_otlp_exporter(bridge, protocol)))
    observer = RoarkObserver(agent_id="fleet-bot", api_key="unused-on-the-bot")
    await run_simulated_call(observer, audio_out_sample_rate=16_000)
    assert otel.force_flush()
    call = roark.wait_for_call_ended(observer.conversation_id, timeout=20)
    ended = call["ended"]
    assert call["started"]["agentId"] == "fleet-bot"
    assert [t["role"] for t in ended["transcript"]][:2] == ["assistant", "user"]
    assert ended["toolCalls"][0]["name"] == "lookup_order"
    assert ended["callEndedReason"] == "agent-ended"
    assert bridge.ingest.stats()["spans"] >= 3


def test_health_and_what_is_not_otlp(make_bridge: BridgeFactory) -> None:
    bridge = make_bridge()
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-protobuf"}
    health = httpx.get(f"{bridge.http_endpoint}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    bad = httpx.post(f"{bridge.http_endpoint}/v1/traces", content=b"\xff\x00nope", headers=auth)
    assert bad.status_code == 400
    assert httpx.post(f"{bridge.http_endpoint}/v1/metrics", headers=auth).status_code in (
        404,
        405,
    )
    traces = f"{bridge.http_endpoint}/v1/traces"
    as_json = {**auth, "Content-Type": "application/json"}
    assert httpx.post(traces, content=b"{}", headers=as_json).status_code == 415
    assert httpx.post(traces, content=b"", headers=auth).status_code == 200


def test_bridge_public_names_are_pinned() -> None:
    import pipecat_roark_otel.bridge as bridge

    assert bridge.__all__ == [
        "ENV_TOKEN",
        "BridgeConfig",
        "Chunk",
        "Decoded",
        "RoarkBridge",
        "decode_logs",
        "decode_traces",
    ]
    assert all(hasattr(bridge, name) for name in bridge.__all__)
