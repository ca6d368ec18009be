"""A late STT final: the user turn closes after the bot's, yet the user spoke first."""

from __future__ import annotations

from pipecat_roark_otel._capture import CallCapture, Turn, iso_from_ns

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
    # The first word heard ends the caller's turn (closing order = speech order) ...
    records += cap.tts_text(7, "Goodbye!", False, 4 * S, played=True)
    records += cap.bot_stopped(5 * S)
    records += cap.flush_all(6 * S)
    turns = [r for r in records if isinstance(r, Turn)]
    assert [(t.role, t.content) for t in turns] == [
        ("user", "great thanks"),
        ("assistant", "Goodbye!"),
    ]
    assert turns[1].onset_ns == 4 * S  # the first word heard, not the stale edge
    # ... so the reply answers it: latency from the caller's stop to that word.
    assert turns[1].latency_ms == 1000


def test_a_reply_waiting_for_its_late_words_closes_before_the_next_record() -> None:
    """A reply ended by BotStoppedSpeaking stays open to late words of its TTS context only,
    and closes, at its own end, before whatever comes next (or at the call's end)."""
    cap = CallCapture()
    cap.has_output_transport = True
    cap.bot_started(1 * S)
    cap.tts_text(1, "Let me", False, 1 * S, played=True, context_id="c1")
    assert cap.bot_stopped(2 * S) == []  # held for a late word
    assert cap.tts_text(2, "check.", False, 2 * S + 1, played=True, context_id="c1") == []
    reply, call = cap.tool_call("t1", "lookup", {}, 3 * S)
    assert isinstance(reply, Turn) and (reply.content, reply.end_timestamp) == (
        "Let me check.",
        iso_from_ns(2 * S),
    )
    assert call.seq == reply.seq + 1
    cap.bot_started(4 * S)
    cap.tts_text(3, "Done.", False, 4 * S, played=True, context_id="c2")
    cap.bot_stopped(5 * S)
    # Another context's word is a reply of its own.
    [other] = cap.tts_text(4, "Bye.", False, 6 * S, played=True, context_id="c3")
    assert isinstance(other, Turn) and other.content == "Done."
    records = cap.bot_stopped(7 * S) + cap.flush_all(8 * S)
    assert [r.content for r in records if isinstance(r, Turn)] == ["Bye."]
