"""One call, two backends: what reached an OTLP receiver correlates with what Roark received."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from pipecat_roark_otel import RoarkObserver, semconv
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter
from pipecat_roark_otel.simulation import run_simulated_call

from .conftest import Otel
from .otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.e2e

# Pipecat's service spans; the simulation has no real STT/LLM/TTS, so they may be absent.
PIPECAT_SERVICE_SPANS = frozenset({"stt", "llm", "tts"})


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


async def test_same_trace_same_id_in_otlp_and_roark(
    exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel, receiver: OtlpReceiver
) -> None:
    otlp = BatchSpanProcessor(OTLPSpanExporter(endpoint=receiver.traces_url))
    otel.add(otlp)
    observer = RoarkObserver(agent_id="correlation-bot")  # no id given anywhere

    await run_simulated_call(observer)
    assert otlp.force_flush(10_000)
    assert exporter.force_flush(15_000)
    call = roark.wait_for_call_ended(observer.conversation_id, timeout=15)

    spans = receiver.spans()
    assert receiver.requests >= 1
    by_name: dict[str, list] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    (conversation,) = by_name["conversation"]
    turns = by_name["turn"]
    (call_span,) = by_name[semconv.SPAN_CALL]
    (start_span,) = by_name[semconv.SPAN_CALL_START]
    assert len(turns) >= 3
    ours = [s for s in spans if s.name in semconv.SPAN_NAMES]
    services = [s for s in spans if s.name in PIPECAT_SERVICE_SPANS]
    correlated = [conversation, *turns, *services, *ours]

    # One trace: Pipecat's conversation, its turns (and any service spans), and ours.
    trace_id = conversation.trace_id
    assert {s.trace_id for s in correlated} == {trace_id}
    assert observer.trace_id == trace_id
    # Our call span hangs under Pipecat's conversation span; so does call-start.
    assert conversation.parent_span_id == ""
    assert call_span.parent_span_id == conversation.span_id
    assert start_span.parent_span_id in (conversation.span_id, call_span.span_id)
    for turn in turns:
        assert turn.parent_span_id == conversation.span_id

    # One id: conversation.id on every correlated span == Roark's pipecatCallId.
    pipecat_call_id = call["ended"]["pipecatCallId"]
    assert call["started"]["pipecatCallId"] == pipecat_call_id == observer.conversation_id
    assert {s.attributes.get(semconv.CONVERSATION_ID) for s in correlated} == {pipecat_call_id}
    assert call_span.attributes[semconv.GEN_AI_CONVERSATION_ID] == pipecat_call_id
    assert call_span.scope == semconv.INSTRUMENTATION_SCOPE

    # The call span carries the record Roark was sent, not just the id.
    assert call_span.attributes[semconv.AGENT_ID] == "correlation-bot"
    assert call_span.attributes[semconv.CALL_ENDED_REASON] == call["ended"]["callEndedReason"]
