"""A late STT final: the user turn closes after the bot's, yet the user spoke first."""

from __future__ import annotations

from pipecat_roark_otel._capture import CallCapture, Turn

S = 1_000_000_000


def test_first_speaker_and_onset_order_follow_speech_not_closing_order() -> None:
    cap = CallCapture()
    records = []
    records += cap.user_started(1 * S)
    cap.user_stopped(2 * S)
    records += cap.bot_started(3 * S)  # no final yet: nothing to close
    cap.tts_text(1, "Hi", False, 3 * S, played=False)
    cap.transcription("hello there", False, 4 * S)  # the STT final lands late
    records += cap.bot_stopped(5 * S)
    records += cap.flush_all(6 * S)
    turns = [r for r in records if isinstance(r, Turn)]
    assert [t.role for t in turns] == ["assistant", "user"]  # closing order
    assert sorted(turns, key=lambda t: t.onset_ns)[0].role == "user"  # speech order
    assert cap.first_speaker == "user"
