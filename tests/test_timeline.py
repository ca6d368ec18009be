"""The recording timeline: pipeline-clock moments to milliseconds into the WAV."""

from __future__ import annotations

from pipecat_roark_otel.audio._timeline import RecordingTimeline

MS = 1_000_000


def test_empty_timeline_knows_nothing() -> None:
    assert RecordingTimeline().position_ms(5 * MS) is None


def test_steady_audio_needs_one_breakpoint() -> None:
    tl = RecordingTimeline()
    for i in range(100):  # 20 ms frames arriving every 20 ms
        tl.observe(1000 * MS + i * 20 * MS, i * 20.0)
    assert len(tl) == 1
    assert tl.position_ms(1000 * MS + 990 * MS) == 990.0


def test_a_dropped_pause_maps_to_where_the_next_audio_starts() -> None:
    tl = RecordingTimeline()
    tl.observe(0, 0.0)  # 1 s of audio from t=0
    tl.observe(1150 * MS, 1000.0)  # after a 150 ms pause the recording did not keep
    assert tl.position_ms(500 * MS) == 500.0
    assert tl.position_ms(1100 * MS) == 1000.0  # inside the pause: capped, not 1100
    assert tl.position_ms(1250 * MS) == 1100.0


def test_moments_before_the_first_audio_count_back_from_it_never_below_zero() -> None:
    tl = RecordingTimeline()
    tl.observe(100 * MS, 0.0)
    assert tl.position_ms(50 * MS) == 0.0
    late = RecordingTimeline()  # the bot's track: its first audio lands 800 ms in
    late.observe(2000 * MS, 800.0)
    assert late.position_ms(1999 * MS) == 799.0


def test_out_of_order_observations_are_ignored() -> None:
    tl = RecordingTimeline()
    tl.observe(100 * MS, 0.0)
    tl.observe(500 * MS, 900.0)
    tl.observe(300 * MS, 50.0)
    assert len(tl) == 2
