"""The real Jaeger: a simulated call's trace found the way docs/OTEL.md tells users to.

The bot exports OTLP straight to Jaeger v2 (the binary ``scripts/otel-binaries.sh``
builds, running ``deploy/jaeger.yaml``); the test then asks Jaeger's HTTP API what
its UI asks when a user searches by tag ``conversation.id=<pipecatCallId>``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from pipecat_roark_otel import semconv
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import ContentFilteringSpanExporter

from .conftest import PROVIDER, Otel
from .otelbin import ROOT, Jaeger
from .test_faults import EXPECTED_TURNS, assert_complete, make_rig
from .test_security import WORDS

pytestmark = pytest.mark.e2e

SIMULATED_CALL = ROOT / "examples" / "simulated_call.py"
SERVICE = "simulated-call"


def run_simulated_call_process(
    roark: LocalRoark, tmp_path: Path, otlp_endpoint: str
) -> dict[str, str]:
    """``examples/simulated_call.py`` as docker-compose.otel.yml runs it: env config only."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ROARK_", "PYTEST_"))}
    env = {
        "ROARK_BASE_URL": roark.base_url,
        "ROARK_API_KEY": roark.api_key,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": SERVICE,
    }
    proc = subprocess.run(
        [sys.executable, str(SIMULATED_CALL), "--speed", "8", "--data-dir", str(tmp_path / "bot")],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    # It prints "call id:  <id>" and "trace id: <id>" among other lines.
    printed = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(":")
        if key in ("call id", "trace id"):
            printed[key] = value.strip()
    return printed


def tags(item: Mapping[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in item.get("tags", [])}


def parent_id(span: Mapping[str, Any]) -> str | None:
    refs = [r for r in span.get("references", []) if r["refType"] == "CHILD_OF"]
    return refs[0]["spanID"] if refs else None


def assert_one_correlated_trace(
    jaeger: Jaeger, service: str, call_id: str, trace_id: str | None = None
) -> dict[str, Any]:
    """Exactly one trace for the call: Pipecat's conversation and turns, and our spans."""
    wanted = {"conversation", "turn", *semconv.SPAN_NAMES}
    traces = jaeger.wait_for_traces(service, {semconv.CONVERSATION_ID: call_id}, wanted)
    assert len(traces) == 1, [t["traceID"] for t in traces]
    (found,) = traces
    if trace_id is not None:
        assert found["traceID"] == trace_id
    spans = found["spans"]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_name.setdefault(span["operationName"], []).append(span)
    (conversation,) = by_name["conversation"]
    (call_span,) = by_name[semconv.SPAN_CALL]
    turns = by_name["turn"]
    assert len(turns) >= 3
    assert parent_id(conversation) is None
    assert parent_id(call_span) == conversation["spanID"]
    assert all(parent_id(t) == conversation["spanID"] for t in turns)
    assert tags(conversation)[semconv.CONVERSATION_ID] == call_id
    assert tags(call_span)[semconv.CONVERSATION_ID] == call_id
    assert tags(call_span)[semconv.GEN_AI_CONVERSATION_ID] == call_id
    assert {found["processes"][s["processID"]]["serviceName"] for s in spans} == {service}
    return found


def test_a_call_in_jaeger_is_one_trace_found_by_its_conversation_id(
    jaeger: Jaeger, roark: LocalRoark, tmp_path: Path
) -> None:
    printed = run_simulated_call_process(roark, tmp_path, jaeger.otlp_http_endpoint)
    call_id, trace_id = printed["call id"], printed["trace id"]
    assert len(trace_id) == 32

    found = assert_one_correlated_trace(jaeger, SERVICE, call_id, trace_id)
    (call_span,) = [s for s in found["spans"] if s["operationName"] == semconv.SPAN_CALL]
    assert tags(call_span)[semconv.AGENT_ID] == "simulated-support-bot"
    # The same call, under the same id, in the local Roark.
    ended = roark.wait_for_call_ended(call_id, timeout=30)["ended"]
    assert ended["pipecatCallId"] == call_id
    assert tags(call_span)[semconv.CALL_ENDED_REASON] == ended["callEndedReason"]
    # The trace page the docs point at is served for that id.
    assert jaeger.get(f"/api/traces/{trace_id}")["data"][0]["traceID"] == trace_id


async def test_content_filter_keeps_the_words_out_of_jaeger_while_roark_has_them(
    jaeger: Jaeger, otel: Otel, tmp_path: Path
) -> None:
    rig, close = make_rig(tmp_path, otel)
    try:
        otlp = BatchSpanProcessor(
            ContentFilteringSpanExporter(
                OTLPSpanExporter(endpoint=f"{jaeger.otlp_http_endpoint}/v1/traces")
            )
        )
        otel.add(otlp)
        observer = await rig.call("filtered-1")
        assert otlp.force_flush(10_000)
        rig.flush()
        call = assert_complete(rig, "filtered-1")  # Roark: the whole call, words and all
    finally:
        close()
    assert call["ended"]["toolCalls"][0]["arguments"] == '{"order_id":"A-1042"}'

    service = str(PROVIDER.resource.attributes["service.name"])
    found = assert_one_correlated_trace(jaeger, service, "filtered-1", observer.trace_id)
    # The structure is there: one event per turn on our spans, roles and all.
    ours = [s for s in found["spans"] if s["operationName"] in semconv.SPAN_NAMES]
    logs = sorted((log for s in ours for log in s["logs"]), key=lambda log: log["timestamp"])
    events = [tags({"tags": log["fields"]}) for log in logs]
    turn_events = [e for e in events if e.get("event") == semconv.EVENT_TURN]
    assert [e[semconv.TURN_ROLE] for e in turn_events] == [r for r, _ in EXPECTED_TURNS]
    # The words are not, nor any content attribute, anywhere in Jaeger's copy.
    stored = "\n".join(strings(found))
    for word in WORDS:
        assert word not in stored, f"{word!r} reached Jaeger"
    for name in semconv.CONTENT_ATTRIBUTES:
        assert name not in stored.splitlines(), f"{name} reached Jaeger"


def strings(value: Any) -> Iterator[str]:
    """Every string in a decoded JSON document, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
