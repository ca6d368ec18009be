"""Rules 4–6 (user turns), docs/CAPTURE_RULES.md: each test fails if its rule breaks."""

from __future__ import annotations

import asyncio
import time

from pipecat.frames.frames import (
    InterimTranscriptionFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)

from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter

from .support.capture import (
    E2E,
    Driver,
    Hops,
    driven_call,
    hand_call,
    now_iso,
    push,
    started_observer,
    turns,
    unix_s,
)


async def test_rule_04_every_transcription_frame_is_final_whatever_finalized_says(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """4. Every TranscriptionFrame is final (interims are separate): never gate on finalized."""
    observer = await started_observer()
    h = Hops()
    for text, finalized in (("streaming final", False), ("explicit final", True)):
        await push(observer, UserStartedSpeakingFrame(), h.stt, h.agg)
        await push(observer, InterimTranscriptionFrame("interim guess", "u", now_iso()), h.stt)
        frame = TranscriptionFrame(text, "caller-1", now_iso(), finalized=finalized)
        await push(observer, frame, h.stt, h.agg)
        await push(observer, UserStoppedSpeakingFrame(), h.stt, h.agg)
    ended = await hand_call(observer, exporter, roark)
    assert turns(ended) == [("user", "streaming final"), ("user", "explicit final")]


@E2E
async def test_rule_05_user_turns_aggregate_and_close_at_each_boundary(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """5. Aggregate a user turn, close it at bot start / next user start / call end."""

    async def script(d: Driver) -> None:
        await d.user_turn("I need", "a refund")  # two final segments, one turn
        await d.user_turn("for order five", stop=False)  # back to back, no reply between
        await asyncio.sleep(0.3)  # the pause before the bot answers
        await d.speak("Sure thing")  # bot start closes the turn above
        await d.user_turn("thanks", stop=False)  # closed by the end of the call

    call, _ = await driven_call(exporter, roark, script)
    ended = call["ended"]
    assert turns(ended) == [
        ("user", "I need a refund"),
        ("user", "for order five"),
        ("assistant", "Sure thing"),
        ("user", "thanks"),
    ]
    _, second, bot, last = ended["transcript"]
    # No offset frame: the end is the moment the turn closed, which was the bot's onset.
    assert second["endTimestamp"] == bot["timestamp"]
    assert unix_s(last["endTimestamp"]) >= unix_s(bot["endTimestamp"])


@E2E
async def test_rule_06_user_turn_is_stamped_at_speech_edges_not_stt_time(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """6. A turn is stamped at speech onset and offset, not at STT emit time."""

    async def script(d: Driver) -> None:
        await asyncio.sleep(0.2)
        d.mark("onset")
        await d.push_frame(UserStartedSpeakingFrame())
        await d.user_audio(0.3, speed=1.0)
        d.mark("offset")
        await d.push_frame(UserStoppedSpeakingFrame())
        await asyncio.sleep(0.5)  # a slow STT
        d.mark("stt")
        await d.push_frame(TranscriptionFrame("where is my parcel", "caller-1", now_iso()))

    call, driver = await driven_call(exporter, roark, script)
    [turn] = call["ended"]["transcript"]
    marks = driver.marks
    assert abs(unix_s(turn["timestamp"]) - marks["onset"]) < 0.05
    assert abs(unix_s(turn["endTimestamp"]) - marks["offset"]) < 0.05
    assert unix_s(turn["endTimestamp"]) < marks["stt"] - 0.3


async def test_rule_06_without_speaking_edges_falls_back_and_end_is_never_omitted(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """6. Without onset frames use the frame's timestamp; without offset, the close time."""
    observer = await started_observer()
    h = Hops()
    stt_time = "2026-01-02T03:04:05.678+00:00"
    await push(observer, TranscriptionFrame("no edges here", "caller-1", stt_time), h.stt, h.agg)
    before_close = time.time()
    ended = await hand_call(observer, exporter, roark)
    [turn] = ended["transcript"]
    assert turn["timestamp"] == stt_time
    assert unix_s(turn["endTimestamp"]) >= before_close - 0.001
