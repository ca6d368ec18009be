"""Rules 16–19 (ending a call), docs/CAPTURE_RULES.md: each test fails if its rule breaks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pipecat.frames.frames import (
    EndFrame,
    EndTaskFrame,
    Frame,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    OutputAudioRawFrame,
    StopFrame,
    StopTaskFrame,
    TranscriptionFrame,
    TTSTextFrame,
)
from pipecat.observers.base_observer import FrameProcessed, FramePushed

from pipecat_roark_otel import RoarkObserver, _compat, _errors, semconv
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter
from pipecat_roark_otel.simulation import (
    SimulatedOutputTransport,
)

from .conftest import Otel
from .support.capture import (
    E2E,
    GREETING,
    TIMEOUT_S,
    Driver,
    driven_call,
    ended_requests,
    greet,
    now_iso,
    pipeline_task,
    read_call,
    run,
    turns,
    unix_s,
)


@E2E
@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("EndFrame", "bye"),
        ("CancelFrame", "host-cancelled"),
        ("StopFrame", None),
        ("aflush", "client-disconnected"),
    ],
)
async def test_rule_16_every_end_path_ends_the_call_once(
    how: str,
    reason: str | None,
    exporter: RoarkSpanExporter,
    roark: LocalRoark,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """16. EndFrame, CancelFrame, StopFrame and aflush() end the call; the second is a no-op."""
    caplog.set_level(logging.WARNING, logger="opentelemetry.sdk.trace")

    async def script(d: Driver) -> None:
        await d.user_turn("hello")
        await d.speak("Hi")

    observer = RoarkObserver(agent_id="capture-rules")
    driver = Driver(script, then=None)
    task = pipeline_task(observer, driver, SimulatedOutputTransport(16.0))
    runner = asyncio.create_task(run(task))
    await asyncio.wait_for(driver.done.wait(), TIMEOUT_S)
    if how == "EndFrame":
        await task.queue_frame(EndFrame(reason=reason))
    elif how == "CancelFrame":
        await task.cancel(reason=reason)
    elif how == "StopFrame":
        await task.queue_frame(StopFrame())
    else:
        await observer.aflush(reason="client-disconnected")
        await task.queue_frame(EndFrame(reason="second-path"))
    await runner
    await observer.aflush(reason="late-aflush")  # ending again is a no-op ...
    # ... not a second end of the call span that the SDK shrugs off.
    assert not [r for r in caplog.records if "ended span" in r.getMessage()]

    call = await read_call(exporter, roark, observer.conversation_id)
    ended = call["ended"]
    assert turns(ended) == [("user", "hello"), ("assistant", "Hi")]
    assert ended["callEndedReason"] not in ("late-aflush", "second-path")
    if reason is not None:
        assert ended["callEndedReason"] == reason
    assert len(ended_requests(roark, observer.conversation_id)) == 1


@E2E
@pytest.mark.parametrize("ask", [EndTaskFrame, StopTaskFrame])
async def test_rule_17_end_waits_for_the_transport_to_play_out_the_last_words(
    ask: type[Frame], exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """17. With an output transport, EndFrame/StopFrame end the call once it played out."""
    last_words = "Thanks for calling and have a lovely day"

    async def script(d: Driver) -> None:
        # Queue the goodbye and ask to end at once, as a bot's end_call tool does.
        await d.speak(last_words, word_s=0.2, wait=False)

    call, _ = await driven_call(exporter, roark, script, speed=4.0, then=ask)
    assert turns(call["ended"]) == [("assistant", last_words)]


class StuckSpeaker(SimulatedOutputTransport):
    """A dead client: the first audio write never returns and shrugs off one cancellation."""

    def __init__(self) -> None:
        super().__init__(1.0)
        self.release = asyncio.Event()

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            await self.release.wait()
        return True


@E2E
async def test_rule_17_cancel_ends_the_call_at_once(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """17. A CancelFrame ends the call at once, even while the transport is stuck playing."""
    long_reply = " ".join(f"word{i}" for i in range(20))

    async def script(d: Driver) -> None:
        await d.speak(long_reply, word_s=0.2, wait=False)

    observer = RoarkObserver(agent_id="capture-rules")
    driver = Driver(script, then=None)
    speaker = StuckSpeaker()
    task = pipeline_task(observer, driver, speaker)
    runner = asyncio.create_task(run(task))
    try:
        await asyncio.wait_for(driver.bot_started.wait(), TIMEOUT_S)
        cancelled_at = time.time()
        await task.cancel()
        ended = (await read_call(exporter, roark, observer.conversation_id))["ended"]
    finally:
        speaker.release.set()
        await runner
    # Pipecat gives the stuck transport a second before passing the CancelFrame on.
    assert unix_s(ended["callEndedAt"]) - cancelled_at < 0.5
    [(role, content)] = turns(ended)
    assert role == "assistant"
    assert long_reply.startswith(content) and content != long_reply


class EndWatchingObserver(RoarkObserver):
    """Tells the test when it starts handling the EndFrame the output transport passed on."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ending = asyncio.Event()

    async def on_push_frame(self, data: FramePushed) -> None:
        if isinstance(data.frame, EndFrame) and _compat.is_output_transport(data.source):
            self.ending.set()
        await super().on_push_frame(data)

    async def on_process_frame(self, data: FrameProcessed) -> None:
        # Observing first pushes only, the passed-on EndFrame shows up here instead.
        if isinstance(data.frame, EndFrame) and _compat.follows_output_transport(data.processor):
            self.ending.set()
        await super().on_process_frame(data)


@E2E
async def test_rule_18_cancelling_the_host_task_mid_send_does_not_lose_call_ended(
    exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    """18. Host cancel while call-ended is being sent: the send survives; aflush() awaits it."""
    roark.faults.set_latency(0.2, endpoint="webhook")  # a slow Roark, too
    observer = EndWatchingObserver(agent_id="capture-rules")
    tail_started, release = asyncio.Event(), asyncio.Event()

    async def slow_tail(*_args: object) -> None:
        tail_started.set()
        await release.wait()

    # The end of the call waits for this handler: the send is in flight until release.
    observer.audio_processor.add_event_handler("on_audio_data", slow_tail)
    runner = asyncio.create_task(
        run(pipeline_task(observer, Driver(greet), SimulatedOutputTransport(16.0)))
    )
    await asyncio.wait_for(observer.ending.wait(), TIMEOUT_S)
    await asyncio.wait_for(tail_started.wait(), TIMEOUT_S)
    runner.cancel()  # the host gives up on the pipeline mid-send

    later = asyncio.create_task(observer.aflush(reason="client-disconnected"))
    done, _ = await asyncio.wait({later}, timeout=0.3)
    assert not done  # aflush() waits for the send in flight ...
    release.set()
    await asyncio.wait_for(later, TIMEOUT_S)
    # ... and once it returns, that send's call span is written.
    [call_span] = [s for s in otel.spans() if s.name == semconv.SPAN_CALL]
    assert call_span.attributes is not None
    assert call_span.attributes[semconv.CALL_ENDED_REASON] == "agent-ended"
    with contextlib.suppress(asyncio.CancelledError):
        await runner

    ended = (await read_call(exporter, roark, observer.conversation_id))["ended"]
    assert ended["callEndedReason"] == "agent-ended"
    assert turns(ended) == [("assistant", GREETING)]
    assert len(ended_requests(roark, observer.conversation_id)) == 1


class _NoTruth:
    """Text that formats fine but explodes when our code tests it."""

    def __bool__(self) -> bool:
        raise RuntimeError("hostile text")

    def __str__(self) -> str:
        return "hostile"


class _Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __str__(self) -> str:
        raise RuntimeError("no str")


@pytest.fixture
def guard_swallows() -> Iterator[None]:
    """The shipped behaviour: the guard logs instead of re-raising (conftest turns it on)."""
    _errors.reset()  # a fresh once-per-minute log window
    _errors.set_raise_internal_errors(False)
    try:
        yield
    finally:
        _errors.set_raise_internal_errors(True)


@E2E
async def test_rule_19_nothing_raises_into_the_pipeline_and_failures_log_once(
    exporter: RoarkSpanExporter,
    roark: LocalRoark,
    guard_swallows: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """19. Nothing the integration does ever raises into the pipeline; failures log once."""
    key = "internal_error:on_push_frame"
    drops_before = _errors.dropped[key]

    async def script(d: Driver) -> None:
        hostile: list[Frame] = [
            TranscriptionFrame(None, "caller-1", now_iso()),  # type: ignore[arg-type]
            TranscriptionFrame(42, None, None),  # type: ignore[arg-type]
            TranscriptionFrame(_NoTruth(), "caller-1", now_iso()),  # type: ignore[arg-type]
            TranscriptionFrame(_NoTruth(), "caller-1", now_iso()),  # type: ignore[arg-type]
            TTSTextFrame(None, "word"),  # type: ignore[arg-type]
            TTSTextFrame(42, "word"),  # type: ignore[arg-type]
            FunctionCallInProgressFrame(
                function_name=None,  # type: ignore[arg-type]
                tool_call_id=None,  # type: ignore[arg-type]
                arguments=_Unprintable(),
            ),
            FunctionCallResultFrame(
                function_name="f",
                tool_call_id=None,  # type: ignore[arg-type]
                arguments=None,
                result={(1, 2): _Unprintable()},
            ),
        ]
        for frame in hostile:
            await d.push_frame(frame)
        await d.user_turn("still here")
        await d.speak("Yes")

    with caplog.at_level(logging.ERROR, logger="pipecat_roark_otel"):
        call, _ = await driven_call(exporter, roark, script)
    ended = call["ended"]
    assert turns(ended) == [("user", "still here"), ("assistant", "Yes")]
    assert [(t["kind"], t["toolCallId"]) for t in ended["toolCalls"]] == [
        ("tool_call", ""),
        ("tool_result", ""),
    ]
    guard_logs = [r for r in caplog.records if "internal error in on_push_frame" in r.getMessage()]
    assert len(guard_logs) == 1  # two failures, one log line
    assert _errors.dropped[key] - drops_before == 2  # both counted
