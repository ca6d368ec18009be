"""A real PipelineTask, real tracing, real HTTP to the local Roark; payloads field by field."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime

import pytest

from pipecat_roark_otel import RoarkObserver, semconv
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter
from pipecat_roark_otel.simulation import run_simulated_call

from .conftest import Otel
from .support import EXPECTED_TURNS

pytestmark = pytest.mark.e2e

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00$")


def _parse(ts: str) -> datetime:
    assert ISO_UTC.match(ts), ts
    return datetime.fromisoformat(ts)


async def _call(
    exporter: RoarkSpanExporter, roark: LocalRoark, observer: RoarkObserver, **kwargs: object
) -> dict:
    recorded: list[bytes] = []

    observer.recording.add_listener(lambda audio, _sr, _ch: recorded.append(audio))
    await run_simulated_call(observer, **kwargs)  # type: ignore[arg-type]
    assert exporter.force_flush(15_000)
    call = roark.wait_for_call_ended(observer.conversation_id, timeout=15)
    call["recorded"] = b"".join(recorded)
    return call


async def test_call_arrives_field_by_field(
    exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    observer = RoarkObserver(
        agent_id="support-bot-v3", agent_name="Support Bot", agent_prompt="Be kind."
    )
    call = await _call(exporter, roark, observer)

    started = call["started"]
    assert started == {
        "event": "call-started",
        "pipecatCallId": observer.conversation_id,
        "eventTimestamp": started["eventTimestamp"],
        "agentId": "support-bot-v3",
        "agentName": "Support Bot",
        "agentPrompt": "Be kind.",
    }
    t0 = _parse(started["eventTimestamp"])

    ended = call["ended"]
    assert list(ended)[:6] == [
        "event",
        "pipecatCallId",
        "eventTimestamp",
        "callStartedAt",
        "callEndedAt",
        "callEndedReason",
    ]
    assert ended["event"] == "call-ended"
    assert ended["pipecatCallId"] == observer.conversation_id
    assert ended["callStartedAt"] == started["eventTimestamp"]
    assert ended["callEndedAt"] == ended["eventTimestamp"]
    assert _parse(ended["callEndedAt"]) > t0
    assert ended["callEndedReason"] == "agent-ended"
    assert ended["agentSpokeFirst"] is True
    assert ended["recordingSampleRate"] == 24_000
    assert ended["recordingNumChannels"] == 2

    turns = [(t["role"], t["content"]) for t in ended["transcript"]]
    assert turns == EXPECTED_TURNS
    onsets = [_parse(t["timestamp"]) for t in ended["transcript"]]
    assert onsets == sorted(onsets)
    for turn in ended["transcript"]:
        assert _parse(turn["endTimestamp"]) >= _parse(turn["timestamp"])
        assert 0 <= turn["audioOffsetMs"] <= turn["endAudioOffsetMs"]
    user = ended["transcript"][1]
    assert user["userId"] == "caller-1"
    assert user["language"] == "en-US"

    call_rec, result = ended["toolCalls"]
    assert call_rec == {
        "kind": "tool_call",
        "toolCallId": "call_1",
        "name": "lookup_order",
        "arguments": '{"order_id":"A-1042"}',
        "timestamp": call_rec["timestamp"],
        "audioOffsetMs": call_rec["audioOffsetMs"],
    }
    assert result["kind"] == "tool_result"
    assert result["toolCallId"] == "call_1"
    assert result["content"] == '{"status":"shipped"}'

    # The receiver saw call-started first and call-ended last, each once.
    log = [r for r in roark.requests(observer.conversation_id) if r["status"] < 300]
    kinds = [r.get("event") or r["path"].split("/")[1] for r in log]
    assert kinds[0] == "call-started"
    assert kinds[-1] == "call-ended"
    assert kinds.count("call-started") == kinds.count("call-ended") == 1

    # Byte-exact: the WAV's PCM is exactly what the recorder produced.
    assert call["recorded"]
    wav = roark.wav_bytes(observer.conversation_id)
    assert wav is not None and wav[44:] == call["recorded"]


@pytest.mark.parametrize("given_to", ["observer", "task", "neither"])
async def test_one_id_everywhere(
    given_to: str, exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    observer = RoarkObserver(
        agent_id="a", conversation_id="obs-id-1" if given_to == "observer" else None
    )
    call = await _call(
        exporter,
        roark,
        observer,
        conversation_id="task-id-1" if given_to == "task" else None,
    )
    expected = {"observer": "obs-id-1", "task": "task-id-1"}.get(given_to, observer.conversation_id)
    assert observer.conversation_id == expected
    assert call["started"]["pipecatCallId"] == expected
    assert call["ended"]["pipecatCallId"] == expected

    spans = otel.spans()
    conversation = next(s for s in spans if s.name == "conversation")
    ours = [s for s in spans if s.name in semconv.SPAN_NAMES]
    call_span = next(s for s in ours if s.name == semconv.SPAN_CALL)
    assert conversation.attributes["conversation.id"] == expected
    assert call_span.parent is not None
    assert call_span.parent.span_id == conversation.context.span_id
    for span in ours + [s for s in spans if s.name == "turn"]:
        assert span.context.trace_id == conversation.context.trace_id
        assert span.attributes["conversation.id"] == expected
    assert observer.trace_id == format(conversation.context.trace_id, "032x")


async def test_call_ended_before_it_started_sends_only_call_ended(
    exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    """The reference's wire output: no call-started, callStartedAt null."""
    observer = RoarkObserver(agent_id="a", conversation_id="never-started")
    await observer.aflush(reason="client-disconnected")
    assert exporter.force_flush(10_000)
    call = roark.wait_for_call_ended("never-started", timeout=10)
    assert call["started"] is None
    ended = call["ended"]
    assert ended["callStartedAt"] is None
    assert ended["callEndedReason"] == "client-disconnected"
    assert "transcript" not in ended and "recordingSampleRate" not in ended


async def test_a_lagging_observer_still_ends_the_call(
    exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    """Pipecat drops an observer's queue at cleanup: the EndFrame may never be seen."""
    from pipecat.frames.frames import EndFrame
    from pipecat.observers.base_observer import FramePushed

    class Lagging(RoarkObserver):
        async def on_push_frame(self, data: FramePushed) -> None:
            if isinstance(data.frame, EndFrame):
                await asyncio.sleep(3600)  # still busy when the pipeline is torn down
            await super().on_push_frame(data)

    observer = Lagging(agent_id="lagging")
    await run_simulated_call(observer)
    assert exporter.force_flush(15_000)
    ended = roark.wait_for_call_ended(observer.conversation_id, timeout=15)["ended"]
    assert ended["callEndedReason"] == "agent-ended"
    assert ended["transcript"][-1]["content"] == "You're welcome. Goodbye!"


async def test_turn_events_show_latency_and_interruptions_in_the_trace(
    exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    """What a user debugging latency looks for first, on the span events themselves."""
    observer = RoarkObserver(agent_id="a")
    await run_simulated_call(observer)
    events = [e for s in otel.spans() if s.name == semconv.SPAN_CALL_SEGMENT for e in s.events]
    turns = sorted((e for e in events if e.name == semconv.EVENT_TURN), key=lambda e: e.timestamp)
    assistant = [e.attributes for e in turns if e.attributes[semconv.TURN_ROLE] == "assistant"]
    assert [a[semconv.TURN_INTERRUPTED] for a in assistant] == [False, False, True, False]
    # Every reply after the caller spoke carries user-stopped → bot-started latency.
    assert semconv.TURN_LATENCY_MS not in assistant[0]  # the greeting answers nobody
    for a in assistant[1:]:
        assert 0 <= a[semconv.TURN_LATENCY_MS] < 5_000
    tools = [e for e in events if e.name in (semconv.EVENT_TOOL_CALL, semconv.EVENT_TOOL_RESULT)]
    assert [
        e.attributes[semconv.TOOL_NAME] for e in tools if semconv.TOOL_NAME in e.attributes
    ] == ["lookup_order"]
    assert all(e.attributes[semconv.TOOL_CALL_ID] == "call_1" for e in tools)
