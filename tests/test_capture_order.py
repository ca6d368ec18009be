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


def test_wordless_bot_start_before_a_user_turn_does_not_date_the_reply() -> None:
    """The transport said the bot started (leftover audio, no words), then the user spoke."""
    cap = CallCapture()
    cap.has_output_transport = True
    records = []
    records += cap.bot_started(1 * S)  # stale: no word ever played for it
    records += cap.user_started(2 * S)
    cap.user_stopped(3 * S)
    cap.transcription("great thanks", False, 3 * S)
    # The transport still thinks the bot is speaking: no new BotStartedSpeakingFrame.
    cap.tts_text(7, "Goodbye!", False, 4 * S, played=True)
    records += cap.bot_stopped(5 * S)
    records += cap.flush_all(6 * S)
    turns = sorted((r for r in records if isinstance(r, Turn)), key=lambda t: t.onset_ns)
    assert [(t.role, t.content) for t in turns] == [
        ("user", "great thanks"),
        ("assistant", "Goodbye!"),
    ]
    assert turns[1].onset_ns == 4 * S  # the first word heard, not the stale edge
