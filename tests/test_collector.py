"""The real OpenTelemetry Collector, running the config files we ship.

``deploy/otel-collector.yaml`` is what docker-compose.otel.yml mounts: bot → Collector
→ Jaeger, checked end to end. ``deploy/otel-collector-fleet.yaml`` is the fleet
Collector: its load-balancing exporter must keep each trace on one backend.
Every shipped config passes the Collector's own ``validate``.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from pipecat_roark_otel.devserver import LocalRoark

from .otelbin import (
    COLLECTOR_CONFIG,
    FLEET_COLLECTOR_CONFIG,
    JAEGER_CONFIG,
    Collector,
    Jaeger,
    binary,
    validate,
)
from .test_jaeger import SERVICE, assert_one_correlated_trace, run_simulated_call_process

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("config", [COLLECTOR_CONFIG, FLEET_COLLECTOR_CONFIG], ids=lambda p: p.name)
def test_shipped_collector_configs_validate(config: Path) -> None:
    # As compose runs them (every ${env:...} at its default) ...
    proc = validate(config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # ... and as the tests run them.
    proc = validate(
        config,
        {
            "OTELCOL_LISTEN_HOST": "127.0.0.1",
            "OTELCOL_OTLP_GRPC_PORT": "14317",
            "ROARK_BRIDGE_ENDPOINTS": "[127.0.0.1:24317, 127.0.0.1:24318]",
            "ROARK_BRIDGE_TOKEN": "fleet-token",
        },
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_broken_config_fails_validation(tmp_path: Path) -> None:
    """The check above can fail: a pipeline naming an undefined exporter is refused."""
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        COLLECTOR_CONFIG.read_text().replace("[otlp_grpc/jaeger, debug]", "[otlp_grpc/nowhere]")
    )
    proc = validate(broken)
    assert proc.returncode != 0
    assert "otlp_grpc/nowhere" in proc.stdout + proc.stderr


def test_a_missing_binary_skips_here_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the real nothing"):
        binary("nothing")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=r"scripts/otel-binaries\.sh"):
        binary("nothing")


def test_shipped_jaeger_config_validates() -> None:
    proc = subprocess.run(
        [str(binary("jaeger")), "validate", f"--config={JAEGER_CONFIG}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_call_through_the_collector_is_one_trace_in_jaeger(
    jaeger: Jaeger, roark: LocalRoark, tmp_path: Path
) -> None:
    env = {"JAEGER_OTLP_GRPC_ENDPOINT": jaeger.otlp_grpc_endpoint}
    with Collector(COLLECTOR_CONFIG, tmp_path / "logs", env) as collector:
        printed = run_simulated_call_process(roark, tmp_path, collector.otlp_http_endpoint)
        call_id = printed["call id"]
        assert_one_correlated_trace(jaeger, SERVICE, call_id, printed["trace id"])
    assert roark.wait_for_call_ended(call_id, timeout=30)["ended"]["pipecatCallId"] == call_id


def test_fleet_collector_keeps_each_trace_on_one_backend(tmp_path: Path) -> None:
    """Routing by trace id, to the backends the env lists: each trace whole on one of them.

    Two Jaegers stand in for two OTLP/gRPC backends (the fleet test runs bridges).
    """
    logs = tmp_path / "logs"
    with Jaeger(logs) as first, Jaeger(logs) as second:
        backends = [first, second]
        env = {
            "ROARK_BRIDGE_ENDPOINTS": f"[{first.otlp_grpc_endpoint}, {second.otlp_grpc_endpoint}]",
            "OTELCOL_STORAGE_DIR": str(tmp_path / "queue"),
            "ROARK_BRIDGE_TOKEN": "fleet-token",  # Jaeger ignores it
        }
        with Collector(FLEET_COLLECTOR_CONFIG, logs, env) as collector:
            provider = TracerProvider(resource=Resource.create({"service.name": "fleet-bot"}))
            provider.add_span_processor(
                BatchSpanProcessor(
                    OTLPSpanExporter(endpoint=f"{collector.otlp_http_endpoint}/v1/traces")
                )
            )
            tracer = provider.get_tracer("fleet-test")
            trace_ids = []
            for i in range(24):
                with tracer.start_as_current_span("conversation") as root:
                    trace_ids.append(format(root.get_span_context().trace_id, "032x"))
                    for n in range(3):
                        with tracer.start_as_current_span("turn", attributes={"i": i, "n": n}):
                            pass
            assert provider.force_flush(10_000)
            provider.shutdown()

            # Per trace, how many of its spans each backend holds: all 4 on exactly one.
            deadline = time.monotonic() + 30
            while True:
                counts = {t: [len(_spans(b, t)) for b in backends] for t in trace_ids}
                if all(sorted(c) == [0, 4] for c in counts.values()):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"spans per backend, by trace: {counts}")
                time.sleep(0.2)
    # Both backends took a share (24 traces all hashing to one of two: about 1 in 8 million).
    assert {c.index(4) for c in counts.values()} == {0, 1}


def _spans(jaeger: Jaeger, trace_id: str) -> list[object]:
    response = httpx.get(f"{jaeger.url}/api/traces/{trace_id}", timeout=10)
    if response.status_code == 404:
        return []
    response.raise_for_status()
    return [s for t in response.json()["data"] for s in t["spans"]]
