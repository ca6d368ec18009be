"""Every call reaches Roark, complete and exact, whatever the user's OTel configuration.

Each row of issue 11's table, set the way users set it (``OTEL_*`` variables read by a
plain ``TracerProvider()``, or ``Sampler``/``SpanLimits`` objects in code): a real
PipelineTask delivers to a local Roark over HTTP, checked field by field, while an
``InMemorySpanExporter`` on the same provider shows what the user's trace backend got.
Samplers that judge Pipecat's ``conversation`` span need the global provider: those
run in a child process (``tests/otel_config_child.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, TraceIdRatioBased

from pipecat_roark_otel import RoarkObserver, _errors
from pipecat_roark_otel import semconv as sc
from pipecat_roark_otel._record import (
    MAX_EVENT_ATTRIBUTES,
    MAX_SPAN_ATTRIBUTES,
    CallIdentity,
    CallRecord,
)
from pipecat_roark_otel.config import ENV_API_KEY, ENV_BASE_URL, ENV_SPOOL_DIR
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter
from pipecat_roark_otel.simulation import run_simulated_call

from .otel_config_child import AGENT_ID, SCRIPT, TOOL_CALL_ID
from .support import EXPECTED_TURNS

pytestmark = pytest.mark.e2e

CHILD = Path(__file__).with_name("otel_config_child.py")


@dataclass
class UserOtel:
    """The user's provider: their trace backend (in memory) and Roark's exporter on it."""

    provider: TracerProvider
    exporter: RoarkSpanExporter
    backend: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)

    def __post_init__(self) -> None:
        self.provider.add_span_processor(SimpleSpanProcessor(self.backend))
        self.provider.add_span_processor(BatchSpanProcessor(self.exporter))

    def ours(self) -> list[ReadableSpan]:
        return [s for s in self.backend.get_finished_spans() if _is_ours(s)]


def _is_ours(span: ReadableSpan) -> bool:
    return span.instrumentation_scope is not None and (
        span.instrumentation_scope.name == sc.INSTRUMENTATION_SCOPE
    )


def _exporter(roark: LocalRoark, spool: Path) -> RoarkSpanExporter:
    return RoarkSpanExporter(api_key=roark.api_key, base_url=roark.base_url, spool_dir=spool)


@pytest.fixture
def user_otel(
    request: pytest.FixtureRequest, roark: LocalRoark, tmp_path: Path
) -> Iterator[UserOtel]:
    """``TracerProvider(**kwargs)`` built after the test set its env (indirect parameter)."""
    env, kwargs = getattr(request, "param", ({}, {}))
    monkeypatch = request.getfixturevalue("monkeypatch")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    otel = UserOtel(TracerProvider(**kwargs), _exporter(roark, tmp_path / "spool"))
    yield otel
    otel.provider.shutdown()
    otel.exporter.shutdown()


async def _call(
    observer: RoarkObserver, roark: LocalRoark, flush: list[Any], **kwargs: Any
) -> dict[str, Any]:
    recorded: list[bytes] = []

    observer.recording.add_listener(lambda audio, _sr, _ch: recorded.append(bytes(audio)))
    await run_simulated_call(observer, script=SCRIPT, **kwargs)
    for target in flush:
        assert target.force_flush(15_000)
    call = roark.wait_for_call_ended(observer.conversation_id, timeout=15)
    call["recorded"] = b"".join(recorded)
    return call


def _observer(call_id: str, **kwargs: Any) -> RoarkObserver:
    return RoarkObserver(
        agent_id=AGENT_ID,
        agent_name="Support Bot",
        agent_prompt="Be kind.",
        conversation_id=call_id,
        **kwargs,
    )


def assert_complete(roark: LocalRoark, call: dict[str, Any], call_id: str) -> None:
    """What Roark gets with default settings, field by field, once."""
    started, ended = call["started"], call["ended"]
    assert started == {
        "event": "call-started",
        "pipecatCallId": call_id,
        "eventTimestamp": started["eventTimestamp"],
        "agentId": AGENT_ID,
        "agentName": "Support Bot",
        "agentPrompt": "Be kind.",
    }
    assert ended["pipecatCallId"] == call_id
    assert ended["callStartedAt"] == started["eventTimestamp"]
    assert ended["callEndedReason"] == "agent-ended"
    assert ended["agentSpokeFirst"] is True
    assert ended["recordingSampleRate"] == 24_000
    assert ended["recordingNumChannels"] == 2
    assert [(t["role"], t["content"]) for t in ended["transcript"]] == EXPECTED_TURNS
    user = ended["transcript"][1]
    assert (user["userId"], user["language"]) == ("caller-1", "en-US")
    for turn in ended["transcript"]:
        assert 0 <= turn["audioOffsetMs"] <= turn["endAudioOffsetMs"]
    tool_call, result = ended["toolCalls"]
    assert tool_call == {
        "kind": "tool_call",
        "toolCallId": TOOL_CALL_ID,
        "name": "lookup_order",
        "arguments": '{"order_id":"A-1042"}',
        "timestamp": tool_call["timestamp"],
        "audioOffsetMs": tool_call["audioOffsetMs"],
    }
    assert (result["kind"], result["toolCallId"]) == ("tool_result", TOOL_CALL_ID)
    assert result["content"] == '{"status":"shipped"}'
    assert call["missing_chunks"] == []
    wav = roark.wav_bytes(call_id)
    assert call["recorded"] and wav is not None and wav[44:] == call["recorded"]
    # Once: the exporter did not also deliver a trimmed copy from the user's provider.
    kinds = [r.get("event") for r in roark.requests(call_id) if r["status"] < 300]
    assert kinds.count("call-started") == kinds.count("call-ended") == 1


def _marked(span: ReadableSpan) -> bool:
    scope = span.instrumentation_scope
    return bool(scope is not None and (scope.attributes or {}).get(sc.SCOPE_BACKEND_COPY))


def _strings(span: ReadableSpan) -> list[str]:
    values = list((span.attributes or {}).values())
    values += [v for e in span.events for v in (e.attributes or {}).values()]
    return [v for v in values if isinstance(v, str)]


# -- the table: one call per row, env and code -----------------------------------------------

ENV_RATIO = {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
ROWS = {
    "defaults": ({}, {}),
    "always_off-env": ({"OTEL_TRACES_SAMPLER": "always_off"}, {}),
    "always_off-code": ({}, {"sampler": ALWAYS_OFF}),
    "span_attributes-env": ({"OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "3"}, {}),
    "span_attributes-code": ({}, {"span_limits": SpanLimits(max_span_attributes=3)}),
    "event_attributes-env": ({"OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT": "2"}, {}),
    "event_attributes-code": ({}, {"span_limits": SpanLimits(max_event_attributes=2)}),
    "value_length-env": ({"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "16"}, {}),
    "value_length-code": ({}, {"span_limits": SpanLimits(max_attribute_length=16)}),
    "event_count-env": ({"OTEL_SPAN_EVENT_COUNT_LIMIT": "4"}, {}),
    "event_count-code": ({}, {"span_limits": SpanLimits(max_events=4)}),
}


@pytest.mark.parametrize("user_otel", list(ROWS.values()), ids=list(ROWS), indirect=True)
async def test_every_row_reaches_roark_complete(
    user_otel: UserOtel, roark: LocalRoark, request: pytest.FixtureRequest
) -> None:
    row = request.node.callspec.id
    call_id = f"row-{row}-" + "0123456789abcdef" * 2
    observer = _observer(call_id, tracer_provider=user_otel.provider)
    call = await _call(observer, roark, [user_otel.provider, user_otel.exporter])
    assert_complete(roark, call, call_id)
    assert [c["pipecatCallId"] for c in roark.calls()] == [call_id]

    ours = user_otel.ours()
    if row.startswith("always_off"):
        # Sampled out: nothing of ours (nor anything else) in the user's backend.
        assert user_otel.backend.get_finished_spans() == ()
        return
    counts = Counter(s.name for s in ours)
    assert counts[sc.SPAN_CALL] == counts[sc.SPAN_CALL_START] == 1
    assert counts[sc.SPAN_CALL_SEGMENT] >= 1
    assert counts[f"{sc.SPAN_EXECUTE_TOOL} lookup_order"] == 1
    call_span = next(s for s in ours if s.name == sc.SPAN_CALL)
    assert observer.trace_id == format(call_span.context.trace_id, "032x")
    if row == "defaults" or row.startswith("event_count"):
        # Nothing to trim: Roark's copy rides the user's provider, as it always did.
        assert not any(_marked(s) for s in ours)
        assert call_span.attributes[sc.CONVERSATION_ID] == call_id
        events = [e for s in ours for e in s.events]
        if row == "defaults":
            assert max(len(s.attributes or {}) for s in ours) <= MAX_SPAN_ATTRIBUTES
            assert max(len(e.attributes or {}) for e in events) <= MAX_EVENT_ATTRIBUTES
        else:
            assert all(len(s.events) <= 4 for s in ours)
        return
    # Trimmed for the backend, exactly as its limits say; Roark got its own copy.
    assert all(_marked(s) for s in ours)
    if row.startswith("span_attributes"):
        assert all(len(s.attributes or {}) <= 3 for s in ours)
        assert any(s.dropped_attributes for s in ours)
    elif row.startswith("event_attributes"):
        events = [e for s in ours for e in s.events]
        assert events and all(len(e.attributes or {}) <= 2 for e in events)
        assert any(e.dropped_attributes for e in events)
    else:
        assert all(len(v) <= 16 for s in ours for v in _strings(s))


@pytest.mark.parametrize(
    "user_otel, ratio",
    [((ENV_RATIO, {}), 0.1), (({}, {"sampler": TraceIdRatioBased(0.5)}), 0.5)],
    ids=["traceidratio-env", "traceidratio-code"],
    indirect=["user_otel"],
)
async def test_ratio_sampler_backend_gets_its_share_roark_gets_all(
    user_otel: UserOtel, ratio: float, roark: LocalRoark, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [f"ratio-{ratio}-{i}" for i in range(4)]
    observers = [_observer(i, tracer_provider=user_otel.provider) for i in ids]
    flush = [user_otel.provider, user_otel.exporter]
    with caplog.at_level(logging.WARNING, logger="pipecat_roark_otel"):
        calls = await asyncio.gather(*(_call(o, roark, flush) for o in observers))
    for call_id, call in zip(ids, calls, strict=True):
        assert_complete(roark, call, call_id)

    sampler = TraceIdRatioBased(ratio)
    kept = {
        o.conversation_id
        for o in observers
        if o.trace_id
        and sampler.should_sample(None, int(o.trace_id, 16), "x").decision.is_sampled()
    }
    in_backend = {
        s.attributes[sc.CONVERSATION_ID] for s in user_otel.ours() if s.name == sc.SPAN_CALL
    }
    assert in_backend == kept
    # One line, not one per call, when the backend missed any.
    lines = [r for r in caplog.records if "did not sample" in r.getMessage()]
    assert len(lines) == (1 if len(kept) < len(ids) else 0)
    if lines:
        assert "TraceIdRatioBased" in lines[0].getMessage()


@pytest.mark.parametrize(
    "user_otel",
    [({"OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "3", "OTEL_TRACES_SAMPLER": "always_off"}, {})],
    indirect=True,
)
async def test_one_line_per_setting_not_per_call(
    user_otel: UserOtel, roark: LocalRoark, caplog: pytest.LogCaptureFixture
) -> None:
    flush = [user_otel.provider, user_otel.exporter]
    with caplog.at_level(logging.WARNING, logger="pipecat_roark_otel"):
        for i in range(2):
            observer = _observer(f"quiet-{i}", tracer_provider=user_otel.provider)
            assert_complete(roark, await _call(observer, roark, flush), f"quiet-{i}")
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "did not sample" in m]) == 1
    (limits,) = [m for m in messages if "span limits" in m]
    assert "max_span_attributes=3" in limits and "Roark still receives" in limits


# -- samplers that judge Pipecat's conversation span (global provider: a child process) ------


def _child(mode: str, roark: LocalRoark, tmp_path: Path, env: dict[str, str]) -> dict[str, Any]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ROARK_", "PYTEST_"))}
    roark_env = {
        ENV_API_KEY: roark.api_key,
        ENV_BASE_URL: roark.base_url,
        ENV_SPOOL_DIR: str(tmp_path / "child-spool"),
    }
    proc = subprocess.run(
        [sys.executable, str(CHILD), mode],
        env={**base, **roark_env, **env},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(
    "mode, env, kept",
    [
        ("drop-conversation-code", {}, False),
        ("env", {"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, False),
        ("env", {"OTEL_TRACES_SAMPLER": "parentbased_always_on"}, True),
    ],
    ids=["parentbased-drops-conversation-code", "parentbased-off-env", "parentbased-on-env"],
)
def test_parent_based_sampler_on_pipecats_conversation(
    mode: str, env: dict[str, str], kept: bool, roark: LocalRoark, tmp_path: Path
) -> None:
    result = _child(mode, roark, tmp_path, env)
    call_id = result["conversation_id"]
    call = roark.wait_for_call_ended(call_id, timeout=15)
    call["recorded"] = bytes.fromhex(result["recorded"])
    assert_complete(roark, call, call_id)
    backend = result["backend"]
    if not kept:
        # Pipecat's conversation was dropped, and so was everything of ours.
        assert result["conversation_sampled"] is False
        assert backend == []
        return
    assert result["conversation_sampled"] is True
    ours = [s for s in backend if s["scope"] == sc.INSTRUMENTATION_SCOPE]
    assert {s["name"] for s in ours} >= {sc.SPAN_CALL, sc.SPAN_CALL_START}
    assert not any(s["backend_copy"] for s in ours)
    call_span = next(s for s in ours if s["name"] == sc.SPAN_CALL)
    conversation = next(s for s in backend if s["name"] == "conversation")
    assert call_span["trace_id"] == conversation["trace_id"] == result["trace_id"]
    assert call_span["parent"] == conversation["span_id"]


# -- two Roark workspaces in one process -------------------------------------------------------


async def test_two_workspaces_each_call_and_recording_reach_only_their_own(
    roark: LocalRoark, tmp_path: Path
) -> None:
    """A platform hosting bots for two customers: two keys, two base URLs, two providers."""
    with LocalRoark(data_dir=tmp_path / "roark-b", api_key="rk_test_customer_b") as roark_b:
        a = UserOtel(TracerProvider(), _exporter(roark, tmp_path / "spool-a"))
        b = UserOtel(TracerProvider(), _exporter(roark_b, tmp_path / "spool-b"))
        try:
            obs_a = _observer("workspace-a-call", tracer_provider=a.provider)
            obs_b = _observer("workspace-b-call", tracer_provider=b.provider)
            call_a, call_b = await asyncio.gather(
                _call(obs_a, roark, [a.provider, a.exporter]),
                _call(obs_b, roark_b, [b.provider, b.exporter]),
            )
        finally:
            for otel in (a, b):
                otel.provider.shutdown()
                otel.exporter.shutdown()
        assert_complete(roark, call_a, "workspace-a-call")
        assert_complete(roark_b, call_b, "workspace-b-call")
        for server, own in ((roark, "workspace-a-call"), (roark_b, "workspace-b-call")):
            assert [c["pipecatCallId"] for c in server.calls()] == [own]
            assert {r["pipecatCallId"] for r in server.requests()} == {own}


async def test_explicit_exporter_beats_the_one_on_the_provider(
    roark: LocalRoark, tmp_path: Path
) -> None:
    """One provider carries workspace A's exporter; a second observer hands over B's."""
    with LocalRoark(data_dir=tmp_path / "roark-b", api_key="rk_test_customer_b") as roark_b:
        a = UserOtel(TracerProvider(), _exporter(roark, tmp_path / "spool-a"))
        exporter_b = _exporter(roark_b, tmp_path / "spool-b")
        try:
            obs_a = _observer("provider-call", tracer_provider=a.provider)
            obs_b = _observer("handed-call", tracer_provider=a.provider, exporter=exporter_b)
            call_a, call_b = await asyncio.gather(
                _call(obs_a, roark, [a.provider, a.exporter]),
                _call(obs_b, roark_b, [a.provider, exporter_b]),
            )
            assert_complete(roark, call_a, "provider-call")
            assert_complete(roark_b, call_b, "handed-call")
            assert [c["pipecatCallId"] for c in roark.calls()] == ["provider-call"]
            assert [c["pipecatCallId"] for c in roark_b.calls()] == ["handed-call"]
            # The provider's backend still traced both calls; B's copy is marked for it alone.
            by_call = {
                s.attributes[sc.CONVERSATION_ID]: _marked(s)
                for s in a.ours()
                if s.name == sc.SPAN_CALL
            }
            assert by_call == {"provider-call": False, "handed-call": True}
        finally:
            a.provider.shutdown()
            a.exporter.shutdown()
            exporter_b.shutdown()


def test_a_trimmed_record_reaching_the_exporter_is_counted_and_logged(
    roark: LocalRoark, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Written past the observer (which would route around the limits): not silent either."""
    limits = SpanLimits(max_span_attributes=3)
    provider = TracerProvider(span_limits=limits)
    exporter = _exporter(roark, tmp_path / "spool")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    record = CallRecord(
        provider.get_tracer(sc.INSTRUMENTATION_SCOPE),
        CallIdentity("trimmed-call", "agent", None, None),
        start_ns=1_795_000_000_000_000_000,
        started_at="2026-11-17T10:13:20+00:00",
        limits=limits,
    )
    with caplog.at_level(logging.WARNING, logger="pipecat_roark_otel"):
        record.close({sc.CALL_ENDED_REASON: "done"}, end_ns=1_795_000_001_000_000_000)
    assert _errors.dropped["trimmed_by_span_limits"] >= 1
    (line,) = [r.getMessage() for r in caplog.records if "Span limits dropped" in r.getMessage()]
    # The SDK evicts the oldest attributes first: the call id is the first to go.
    assert "call unknown" in line
    assert not roark.calls()
    exporter.shutdown()
