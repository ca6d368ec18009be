"""Fleet path: a bot exports OTLP (gRPC or HTTP); the bridge stores it and delivers to Roark."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
    OTLPLogExporter as GrpcLogExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http._log_exporter import (
    OTLPLogExporter as HttpLogExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from pipecat_roark_otel import RoarkObserver
from pipecat_roark_otel.audio import OTLPRecordingTarget
from pipecat_roark_otel.bridge import RoarkBridge
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.simulation import run_simulated_call

from .conftest import TOKEN, BridgeFactory, Otel
from .test_recording import Wav


def _otlp_exporters(bridge: RoarkBridge, protocol: str) -> tuple[SpanExporter, LogRecordExporter]:
    """A bot's OTLP span and log exporters to the bridge, as users configure them."""
    if protocol == "grpc":
        endpoint, headers = bridge.grpc_endpoint, {"authorization": f"Bearer {TOKEN}"}
        return (
            GrpcSpanExporter(endpoint=endpoint, insecure=True, headers=headers),
            GrpcLogExporter(endpoint=endpoint, insecure=True, headers=headers),
        )
    headers = {"Authorization": f"Bearer {TOKEN}"}
    return (
        HttpSpanExporter(endpoint=f"{bridge.http_endpoint}/v1/traces", headers=headers),
        HttpLogExporter(endpoint=f"{bridge.http_endpoint}/v1/logs", headers=headers),
    )


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_recording_crosses_the_bridge_byte_exact(
    protocol: str, roark: LocalRoark, otel: Otel, make_bridge: BridgeFactory
) -> None:
    """The bot host has no Roark exporter and no Roark key: spans and audio go out as OTLP."""
    bridge = make_bridge()
    span_exporter, log_exporter = _otlp_exporters(bridge, protocol)
    otel.add(BatchSpanProcessor(span_exporter))
    logs = LoggerProvider()
    logs.add_log_record_processor(BatchLogRecordProcessor(log_exporter, max_export_batch_size=1))
    try:
        observer = RoarkObserver(agent_id="fleet-bot", recording_target=OTLPRecordingTarget(logs))
        recorded: list[bytes] = []
        observer.recording.add_listener(lambda pcm, _rate, _channels: recorded.append(pcm))
        await run_simulated_call(observer, audio_out_sample_rate=16_000)
        assert otel.force_flush()
        assert logs.force_flush()
    finally:
        logs.shutdown()
    call_id = observer.conversation_id
    call = roark.wait_for_call_ended(call_id, timeout=30)
    assert call["ended"]["recordingSampleRate"] == 16_000
    assert call["ended"]["recordingNumChannels"] == 2
    assert call["missing_chunks"] == []
    assert call["chunks"] == {i: len(c) for i, c in enumerate(recorded)}
    wav = roark.wav_bytes(call_id)
    assert wav is not None
    assert Wav.parse(wav).pcm == b"".join(recorded)
    assert bridge.ingest.stats()["chunks"] == len(recorded) > 0


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_call_crosses_the_bridge(
    protocol: str, roark: LocalRoark, otel: Otel, make_bridge: BridgeFactory
) -> None:
    bridge = make_bridge()
    # The bot host: OTLP only, no Roark exporter in process.
    otel.add(BatchSpanProcessor(_otlp_exporters(bridge, protocol)[0]))
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
        "TLSFiles",
        "decode_logs",
        "decode_traces",
    ]
    assert all(hasattr(bridge, name) for name in bridge.__all__)
