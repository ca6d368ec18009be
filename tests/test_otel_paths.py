"""The three ways to plug RoarkSpanExporter into OpenTelemetry, each delivering a real call.

(1) an existing TracerProvider, beside an OTLP exporter; (2) Pipecat's ``setup_tracing``;
(3) the SDK's auto-configuration, ``OTEL_TRACES_EXPORTER=otlp,roark``. Paths 2 and 3
set the global provider, which conftest already set in this process: they run in a
child process (``tests/otel_child.py``) against a local Roark started here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from pipecat_roark_otel import RoarkObserver, semconv
from pipecat_roark_otel.config import ENV_API_KEY, ENV_BASE_URL, ENV_SPOOL_DIR
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter
from pipecat_roark_otel.simulation import run_simulated_call

from .conftest import Otel
from .otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.e2e

CHILD = Path(__file__).with_name("otel_child.py")


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def _assert_delivered(roark: LocalRoark, call_id: str, agent_id: str) -> dict:
    call = roark.wait_for_call_ended(call_id, timeout=15)
    assert call["started"]["agentId"] == agent_id
    assert call["ended"]["pipecatCallId"] == call_id
    assert len(call["ended"]["transcript"]) == 7
    assert call["ended"]["toolCalls"][0]["name"] == "lookup_order"
    assert call["missing_chunks"] == []
    wav = roark.wav_bytes(call_id)
    assert wav is not None and wav[:4] == b"RIFF" and len(wav) > 44
    return call


def _assert_traced(receiver: OtlpReceiver, call_id: str) -> None:
    spans = receiver.spans()
    call_span = next(s for s in spans if s.name == semconv.SPAN_CALL)
    conversation = next(s for s in spans if s.name == "conversation")
    assert call_span.attributes[semconv.CONVERSATION_ID] == call_id
    assert conversation.attributes[semconv.CONVERSATION_ID] == call_id
    assert call_span.trace_id == conversation.trace_id
    assert call_span.parent_span_id == conversation.span_id


# -- (1) an existing provider, beside OTLP -----------------------------------------------


async def test_existing_provider_beside_otlp(
    otel: Otel,
    roark: LocalRoark,
    receiver: OtlpReceiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_API_KEY, roark.api_key)
    monkeypatch.setenv(ENV_BASE_URL, roark.base_url)
    monkeypatch.setenv(ENV_SPOOL_DIR, str(tmp_path / "spool"))
    # As in docs/OTEL.md: `otel.add` is `provider.add_span_processor` on the global provider.
    otlp = BatchSpanProcessor(OTLPSpanExporter(endpoint=receiver.traces_url))
    to_roark = BatchSpanProcessor(RoarkSpanExporter())
    otel.add(otlp)
    otel.add(to_roark)

    observer = RoarkObserver(agent_id="existing-provider-bot")
    await run_simulated_call(observer)
    assert otlp.force_flush(10_000)
    assert to_roark.force_flush(10_000)

    _assert_delivered(roark, observer.conversation_id, "existing-provider-bot")
    _assert_traced(receiver, observer.conversation_id)


# -- (2) and (3): a fresh process ------------------------------------------------------------


def _run_child(mode: str, env: dict[str, str]) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ROARK_", "PYTEST_"))}
    proc = subprocess.run(
        [sys.executable, str(CHILD), mode],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _roark_env(roark: LocalRoark, tmp_path: Path) -> dict[str, str]:
    return {
        ENV_API_KEY: roark.api_key,
        ENV_BASE_URL: roark.base_url,
        ENV_SPOOL_DIR: str(tmp_path / "child-spool"),
    }


def test_pipecat_setup_tracing(roark: LocalRoark, tmp_path: Path) -> None:
    result = _run_child("setup_tracing", _roark_env(roark, tmp_path))
    assert result["provider"] == "TracerProvider"
    call_id = result["conversation_id"]
    assert result["trace_id"]  # the call span is in Pipecat's conversation trace
    _assert_delivered(roark, call_id, "child-bot")


def test_roark_entry_point() -> None:
    (ep,) = entry_points(group="opentelemetry_traces_exporter", name="roark")
    assert ep.value == "pipecat_roark_otel.exporter:RoarkSpanExporter"
    assert ep.load() is RoarkSpanExporter


def test_entry_point_needs_env_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK instantiates exporters with no arguments: config must come from env, or fail clearly.
    monkeypatch.setenv(ENV_SPOOL_DIR, str(tmp_path / "spool"))
    with pytest.raises(ValueError, match=ENV_API_KEY):
        RoarkSpanExporter()
    monkeypatch.setenv(ENV_API_KEY, "rk_test_env")
    monkeypatch.setenv(ENV_BASE_URL, "http://127.0.0.1:9")
    exp = RoarkSpanExporter()
    try:
        assert exp.settings.base_url == "http://127.0.0.1:9"
        assert exp.settings.spool_dir == tmp_path / "spool"
    finally:
        exp.shutdown()


def test_sdk_autoconfiguration_otlp_and_roark(
    roark: LocalRoark, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    env = {
        **_roark_env(roark, tmp_path),
        "OTEL_TRACES_EXPORTER": "otlp,roark",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "autoconfigured-bot",
    }
    result = _run_child("autoconfigure", env)
    call_id = result["conversation_id"]
    _assert_delivered(roark, call_id, "child-bot")
    _assert_traced(receiver, call_id)
    assert {s.resource.get("service.name") for s in receiver.spans()} == {"autoconfigured-bot"}
    assert {s.trace_id for s in receiver.spans()} == {result["trace_id"]}
