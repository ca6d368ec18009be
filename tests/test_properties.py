"""Hostile input, generated: capture never raises, payloads always validate, nothing is dropped.

Frames go through ``RoarkObserver.on_push_frame`` (the real entry point, its guard
re-raising under conftest's switch) into an in-memory span exporter; the spans
are translated and the call-ended body assembled exactly as the exporter and the
delivery thread do, so every example checks the whole path up to the wire.
The local Roark's own rejection of malformed JSON, wrong types, oversized bodies
and bad signatures (4xx, nothing stored) is covered in tests/test_devserver.py.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    StartFrame,
    StopFrame,
    TranscriptionFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import FramePushed
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from pipecat_roark_otel import RoarkObserver, semconv
from pipecat_roark_otel.exporter._assemble import assemble_call_ended
from pipecat_roark_otel.exporter._payloads import (
    CallEnded,
    CallStarted,
    ToolCallRecord,
    ToolResultRecord,
    TranscriptTurn,
)
from pipecat_roark_otel.exporter._translate import is_ours, translate
from pipecat_roark_otel.simulation import SimulatedOutputTransport

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- values ---------------------------------------------------------------------------------------

HUGE = "x" * 200_000
texts = st.one_of(
    st.none(),
    st.just(""),
    st.just("   "),
    st.just(HUGE),
    st.just("héllo wörld 你好 🎉 \u200b\u202e\x00"),
    st.text(max_size=40),
)


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __str__(self) -> str:
        raise RuntimeError("no str")


def _cycle() -> dict[str, Any]:
    d: dict[str, Any] = {"a": 1}
    d["self"] = d
    return d


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
tool_values = st.one_of(
    json_values,
    st.just(HUGE),
    st.just('{"not": json'),  # a string passes verbatim, valid JSON or not
    st.builds(object),
    st.builds(Unprintable),
    st.builds(_cycle),
    st.just({1: "int key", (2, 3): "tuple key"}),
    st.just({"set": {1, 2}, "bytes": b"\xff\x00", "nan": math.nan}),
    st.binary(max_size=8),
)
ids = st.one_of(st.none(), st.just(""), st.sampled_from(["t1", "t2", "t3"]), st.text(max_size=6))


# -- frames ---------------------------------------------------------------------------------------


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    kind = draw(st.integers(0, 11))
    if kind == 0:
        return TranscriptionFrame(
            draw(texts),  # type: ignore[arg-type]
            draw(st.one_of(st.none(), st.text(max_size=6))),  # type: ignore[arg-type]
            draw(st.one_of(st.none(), st.just(""), st.just("not a time"), st.text(max_size=8))),  # type: ignore[arg-type]
            language=draw(st.one_of(st.none(), st.text(max_size=5))),  # type: ignore[arg-type]
        )
    if kind == 1:
        return InterimTranscriptionFrame(draw(texts), "u", "t")  # type: ignore[arg-type]
    if kind == 2:
        frame = TTSTextFrame(draw(texts), "word")  # type: ignore[arg-type]
        frame.includes_inter_frame_spaces = draw(st.booleans())
        return frame
    if kind == 3:
        return FunctionCallInProgressFrame(
            draw(ids),  # type: ignore[arg-type]
            draw(ids),  # type: ignore[arg-type]
            draw(tool_values),
        )
    if kind == 4:
        return FunctionCallResultFrame(
            draw(ids),  # type: ignore[arg-type]
            draw(ids),  # type: ignore[arg-type]
            draw(tool_values),
            draw(tool_values),
        )
    simple: list[type[Frame]] = [
        UserStartedSpeakingFrame,
        UserStoppedSpeakingFrame,
        BotStartedSpeakingFrame,
        BotStoppedSpeakingFrame,
        InterruptionFrame,
        StartFrame,
        StopFrame,
    ]
    return simple[kind - 5]()


@dataclass
class Push:
    frame: int  # index into the frame pool: the same frame may be pushed again (hops)
    played: bool  # from the output transport (words heard) or from a service
    timestamp: int


@st.composite
def calls(draw: st.DrawFn) -> tuple[list[Frame], list[Push], str]:
    pool = draw(st.lists(frames(), min_size=1, max_size=25))
    pushes = draw(
        st.lists(
            st.builds(
                Push,
                st.integers(0, len(pool) - 1),
                st.booleans(),
                st.one_of(st.just(0), st.integers(-(10**12), 10**18)),
            ),
            max_size=50,
        )
    )
    ending = draw(st.sampled_from(["end", "cancel", "aflush", "none", "end+aflush"]))
    return pool, pushes, ending


def _provider(limit: int | None = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    kwargs: dict[str, Any] = {}
    if limit is not None:
        kwargs["span_limits"] = SpanLimits(max_events=limit)
    provider = TracerProvider(**kwargs)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory


def _observer(provider: TracerProvider, call_id: str = "prop-call") -> RoarkObserver:
    return RoarkObserver(
        agent_id="prop-agent",
        api_key="rk_test_props",
        base_url="http://127.0.0.1:9",
        conversation_id=call_id,
        tracer_provider=provider,
    )


async def _drive(
    observer: RoarkObserver, pool: Sequence[Frame], pushes: Sequence[Push], ending: str
) -> None:
    service = FrameProcessor()
    output = SimulatedOutputTransport(speed=8.0)
    await observer.on_pipeline_started()
    for push in pushes:
        source = output if push.played else service
        data = FramePushed(
            source=source,
            destination=service,
            frame=pool[push.frame],
            direction=FrameDirection.DOWNSTREAM,
            timestamp=push.timestamp,
        )
        await observer.on_push_frame(data)
    end_source = output
    if ending in ("end", "end+aflush"):
        await observer.on_push_frame(
            FramePushed(end_source, service, EndFrame(), FrameDirection.DOWNSTREAM, 0)
        )
    elif ending == "cancel":
        await observer.on_push_frame(
            FramePushed(service, output, CancelFrame(), FrameDirection.DOWNSTREAM, 0)
        )
    if ending in ("aflush", "end+aflush"):
        await observer.aflush()


@dataclass
class Wire:
    started: list[dict[str, Any]]
    segments: list[dict[str, Any]]
    ends: list[dict[str, Any]]
    call_ended: dict[str, Any] | None
    recorded_turns: int | None
    recorded_tools: int | None


def _wire(memory: InMemorySpanExporter) -> Wire:
    """Translate our spans as the exporter does and assemble call-ended as delivery does."""
    started: list[dict[str, Any]] = []
    segments: list[tuple[int, dict[str, Any]]] = []
    ends: list[dict[str, Any]] = []
    turns = tools = None
    for span in memory.get_finished_spans():
        if not is_ours(span):
            continue
        item = translate(span)
        assert item is not None, span.name
        if item.kind == "started":
            started.append(CallStarted.model_validate(item.body).wire())
        elif item.kind == "segment":
            segments.append((item.index, item.body))
        else:
            ends.append(item.body)
            attrs = span.attributes or {}
            turns = attrs.get(semconv.CALL_TURN_COUNT)
            tools = attrs.get(semconv.CALL_TOOL_EVENT_COUNT)
    for _, body in segments:
        for entry in body["entries"]:
            model = TranscriptTurn if entry["kind"] == "turn" else None
            if model is not None:
                model.model_validate(entry["record"])
            elif entry["record"]["kind"] == "tool_call":
                ToolCallRecord.model_validate(entry["record"])
            else:
                ToolResultRecord.model_validate(entry["record"])
    ordered = [body for _, body in sorted(segments, key=lambda s: s[0])]
    call_ended = None
    if ends:
        assert len(ends) == 1
        assert ends[0]["segments"] == len(ordered)
        assert sorted(i for i, _ in segments) == list(range(len(ordered)))
        call_ended, rejected = assemble_call_ended(ends[0], ordered)
        assert rejected == 0
        CallEnded.model_validate(call_ended)
    return Wire(started, ordered, ends, call_ended, turns, tools)  # type: ignore[arg-type]


def _check(wire: Wire) -> None:
    assert len(wire.started) == 1
    if wire.call_ended is None:
        return
    transcript = wire.call_ended.get("transcript", [])
    tool_records = wire.call_ended.get("toolCalls", [])
    # Nothing the record counted was lost between the span events and the wire body.
    assert len(transcript) == wire.recorded_turns
    assert len(tool_records) == wire.recorded_tools
    for turn in transcript:
        assert turn["content"].strip()
    onsets = [e["onset_ns"] for s in wire.segments for e in s["entries"] if e["kind"] == "turn"]
    assert len(onsets) == len(transcript)


@SETTINGS
@given(calls())
def test_any_frame_sequence_is_captured_without_raising_and_validates(
    call: tuple[list[Frame], list[Push], str],
) -> None:
    pool, pushes, ending = call
    provider, memory = _provider()
    observer = _observer(provider)
    asyncio.run(_drive(observer, pool, pushes, ending))
    wire = _wire(memory)
    _check(wire)
    if ending != "none":  # with "none", only a generated StopFrame may have ended it
        assert wire.call_ended is not None
        reason = wire.call_ended["callEndedReason"]
        assert reason in ("agent-ended", "client-disconnected", "unknown")


@settings(SETTINGS, max_examples=25)
@given(
    limit=st.integers(1, 140),
    turns=st.integers(0, 100),
    tools=st.integers(0, 40),
)
def test_no_span_event_limit_drops_a_record(limit: int, turns: int, tools: int) -> None:
    old = os.environ.get("OTEL_SPAN_EVENT_COUNT_LIMIT")
    os.environ["OTEL_SPAN_EVENT_COUNT_LIMIT"] = str(limit)  # the writer sizes segments by it
    try:
        provider, memory = _provider(limit)
        observer = _observer(provider, f"limit-{limit}")
        asyncio.run(_drive_long(observer, turns, tools))
    finally:
        if old is None:
            del os.environ["OTEL_SPAN_EVENT_COUNT_LIMIT"]
        else:
            os.environ["OTEL_SPAN_EVENT_COUNT_LIMIT"] = old
    wire = _wire(memory)
    _check(wire)
    assert wire.call_ended is not None
    _check_long(wire.call_ended, turns, tools)
    for span in memory.get_finished_spans():
        # The call span carries only its two lifecycle markers (the data is in attributes).
        allowed = max(0, 2 - limit) if span.name == semconv.SPAN_CALL else 0
        assert span.dropped_events <= allowed, (span.name, limit)


async def _drive_long(observer: RoarkObserver, turns: int, tools: int) -> None:
    """``turns`` user/assistant pairs, a tool call + result after every ``turns/tools`` pairs."""
    service = FrameProcessor()
    output = SimulatedOutputTransport(speed=8.0)
    await observer.on_pipeline_started()
    push = observer.on_push_frame

    def pushed(frame: Frame, source: FrameProcessor = service) -> FramePushed:
        return FramePushed(source, service, frame, FrameDirection.DOWNSTREAM, 0)

    await push(pushed(StartFrame(), output))
    tool_i = 0
    for i in range(max(turns, tools)):
        if i < turns:
            await push(pushed(UserStartedSpeakingFrame()))
            await push(pushed(TranscriptionFrame(f"user says {i}", "u", "")))
            await push(pushed(UserStoppedSpeakingFrame()))
            await push(pushed(BotStartedSpeakingFrame()))
            await push(pushed(TTSTextFrame(f"bot says {i}", "word"), output))
            await push(pushed(BotStoppedSpeakingFrame()))
        if tool_i < tools:
            cid = f"tool-{tool_i}"
            await push(pushed(FunctionCallInProgressFrame("f", cid, {"i": tool_i})))
            await push(pushed(FunctionCallResultFrame("f", cid, {"i": tool_i}, [tool_i])))
            tool_i += 1
    await push(pushed(EndFrame(), output))


def _check_long(ended: dict[str, Any], turns: int, tools: int) -> None:
    transcript = ended.get("transcript", [])
    expected = [c for i in range(turns) for c in (f"user says {i}", f"bot says {i}")]
    assert [t["content"] for t in transcript] == expected
    records = ended.get("toolCalls", [])
    assert [(r["kind"], r["toolCallId"]) for r in records] == [
        (kind, f"tool-{i}") for i in range(tools) for kind in ("tool_call", "tool_result")
    ]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_long_call_under_default_span_limits_arrives_complete() -> None:
    """> 2000 turns and 500 tool calls, the SDK's default 128 events per span."""
    assert SpanLimits().max_events == 128
    provider, memory = _provider()
    observer = _observer(provider, "long-call")
    asyncio.run(_drive_long(observer, 1050, 500))
    wire = _wire(memory)
    assert wire.call_ended is not None
    assert len(wire.call_ended["transcript"]) == 2100
    _check_long(wire.call_ended, 1050, 500)
    assert wire.recorded_turns == 2100 and wire.recorded_tools == 1000
    assert len(wire.segments) >= 3100 // 128
    for span in memory.get_finished_spans():
        assert span.dropped_events == 0
