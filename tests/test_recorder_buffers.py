"""The hop-free recorder's chunk buffers: handed out without a copy, owned by whoever holds them.

Each chunk lives in an anonymous mapping of its own. Once handed out the recorder never
touches it again (the next chunk starts in a fresh one), and the mapping is returned to the
system when the last view of it drops: after the delivery thread persisted it.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest

from pipecat_roark_otel.audio import ObservedRecorder
from pipecat_roark_otel.audio._chunks import Chunk, ChunkSink
from pipecat_roark_otel.exporter._handoff import Handoff
from pipecat_roark_otel.exporter._items import chunk as chunk_item
from pipecat_roark_otel.exporter._outbox import Outbox, call_key
from pipecat_roark_otel.exporter._stats import Stats

RATE = 24_000
FRAME = RATE // 50  # 20 ms
CHUNK_BYTES = 16 * 1024  # small chunks: many hand-outs in a short call
FRAME_NS = 20_000_000


def frame(index: int, n: int = FRAME) -> bytes:
    """A frame whose every sample says which frame it is: any overwrite shows."""
    return np.full(n, index % 30_000 + 1, dtype=np.int16).tobytes()


class Collected:
    """Each chunk as a view (no copy) and as the bytes it held when it was handed out."""

    def __init__(self, recorder: ObservedRecorder) -> None:
        self.views: list[memoryview] = []
        self.at_hand_out: list[bytes] = []
        self.copies: list[bytes] = []
        recorder.add_buffer_listener(self._view)
        recorder.add_listener(lambda pcm, _rate, _channels: self.copies.append(pcm))

    def _view(self, pcm: memoryview, rate: int, channels: int) -> None:
        assert (rate, channels) == (RATE, 2)
        self.views.append(pcm)
        self.at_hand_out.append(bytes(pcm))


def bot_only(frames: int, *, pause_after: int | None = None, pause_ns: int = 0) -> tuple:
    recorder = ObservedRecorder(chunk_bytes=CHUNK_BYTES)
    got = Collected(recorder)
    recorder.start(RATE)
    recorder.bot_speaking(True)
    clock = 0
    sent = []
    for i in range(frames):
        clock += FRAME_NS
        if pause_after is not None and i == pause_after:
            clock += pause_ns
        audio = frame(i)
        sent.append(audio)
        recorder.bot_audio(audio, RATE, 1, clock)
    return recorder, got, sent


def right_channel(chunks: list[bytes]) -> bytes:
    stereo = np.frombuffer(b"".join(chunks), dtype=np.int16)
    assert not stereo[0::2].any(), "nothing was said on the user's channel"
    return stereo[1::2].tobytes()


def test_a_handed_out_chunk_stays_intact_after_the_recorder_moves_on_and_the_call_ends() -> None:
    recorder, got, sent = bot_only(300)
    mid_call = len(got.views)
    assert mid_call >= 5
    recorder.stop()
    for i in range(300, 400):  # after the end: ignored, and must not touch earlier chunks
        recorder.bot_audio(frame(i), RATE, 1, (i + 1) * FRAME_NS)
    gc.collect()
    assert [bytes(v) for v in got.views] == got.at_hand_out == got.copies
    assert all(isinstance(c, bytes) for c in got.copies)
    assert right_channel(got.copies) == b"".join(sent)


def test_a_handed_out_chunk_is_read_only() -> None:
    recorder, got, _ = bot_only(100)
    recorder.stop()
    view = got.views[0]
    assert view.readonly
    with pytest.raises(TypeError):
        view[0] = 1
    with pytest.raises(ValueError):
        np.frombuffer(view, dtype=np.int16)[0] = 1


def test_the_tail_is_exact_and_no_bigger_than_what_was_said() -> None:
    frames = 173  # not a whole number of chunks
    recorder, got, sent = bot_only(frames)
    recorder.stop()
    total = frames * FRAME * 4  # stereo, 16-bit
    assert sum(len(c) for c in got.copies) == total
    assert all(len(c) >= CHUNK_BYTES for c in got.copies[:-1])
    assert 0 < len(got.copies[-1]) <= CHUNK_BYTES
    assert right_channel(got.copies) == b"".join(sent)


def test_a_long_pause_grows_the_chunk_and_every_chunk_stays_exact() -> None:
    # 3 s of silence in one gap: more than a chunk's worth, padded in one go.
    recorder, got, sent = bot_only(120, pause_after=60, pause_ns=3_000_000_000)
    recorder.stop()
    gap = b"\x00\x00" * (3 * RATE)
    assert right_channel(got.copies) == b"".join(sent[:60]) + gap + b"".join(sent[60:])
    assert [bytes(v) for v in got.views] == got.at_hand_out


def test_the_mapping_is_returned_once_the_last_view_drops() -> None:
    recorder, got, _ = bot_only(100)
    first = weakref.ref(got.views[0].obj)
    recorder.stop()
    got.views.clear()
    gc.collect()
    assert first() is None


def test_a_resampled_user_track_fills_its_channel_to_the_exact_length() -> None:
    recorder = ObservedRecorder()  # the default chunk: larger than a resampling batch
    got = Collected(recorder)
    recorder.start(RATE)
    recorder.user_speaking(True)
    frames = 600  # 12 s at 16 kHz: many resampling batches, five chunks
    tone = (3000 * np.sin(np.arange(320 * frames) * 2 * np.pi * 440 / 16_000)).astype(np.int16)
    for i in range(frames):
        recorder.user_audio(tone[320 * i : 320 * (i + 1)].tobytes(), 16_000, 1, (i + 1) * FRAME_NS)
    recorder.stop()
    stereo = np.frombuffer(b"".join(got.copies), dtype=np.int16)
    assert len(stereo) == 2 * frames * FRAME  # 16 kHz -> 24 kHz, the resampler's tail flushed
    left = stereo[0::2].astype(np.float64)
    assert not stereo[1::2].any()
    # The same tone at the recording's rate (resampler delay aside, well under a frame).
    expected = 3000 * np.sin(np.arange(len(left)) * 2 * np.pi * 440 / RATE)
    middle = slice(RATE, 4 * RATE)
    best = max(
        np.corrcoef(left[middle], np.roll(expected, lag)[middle])[0, 1] for lag in range(0, 60)
    )
    assert best > 0.99
    assert len(got.views) == 5  # 12 s of stereo 24 kHz in 256 KiB chunks
    assert [bytes(v) for v in got.views] == got.at_hand_out


def test_the_handoff_persists_a_view_byte_exact_and_then_lets_it_go(tmp_path: Path) -> None:
    recorder, got, _ = bot_only(100)
    recorder.stop()
    outbox = Outbox(tmp_path / "spool")
    stored: list[str] = []
    handoff = Handoff(outbox, Stats(outbox.depth), 64 * 1024 * 1024, stored.append)
    expected = list(got.at_hand_out)
    mapping = weakref.ref(got.views[0].obj)
    for index, view in enumerate(got.views):
        assert handoff.submit(Chunk("call-1", index, view, RATE, 2))
    got.views.clear()
    gc.collect()
    assert mapping() is not None  # waiting in the hand-off: still alive, still intact
    while handoff.persist_one():
        pass
    gc.collect()
    assert mapping() is None
    key = call_key("call-1")
    assert stored == [key] * len(expected)
    assert [outbox.load_bytes(key, chunk_item(i)) for i in range(len(expected))] == expected


class _UserTarget:
    """A ``recording_target`` of the user's own: it is promised ``bytes``."""

    def __init__(self) -> None:
        self.got: list[object] = []

    def submit_chunk(
        self,
        call_id: str,
        index: int,
        pcm: bytes,
        *,
        sample_rate: int | None = None,
        num_channels: int | None = None,
    ) -> bool:
        self.got.append(pcm)
        return True


class _EngineLike(_UserTarget):
    takes_buffers = True


@pytest.mark.parametrize(("target_type", "kind"), [(_UserTarget, bytes), (_EngineLike, memoryview)])
def test_a_users_target_gets_bytes_and_only_the_engine_gets_the_view(
    target_type: type[_UserTarget], kind: type
) -> None:
    recorder, got, _ = bot_only(100)
    sink = ChunkSink()
    recorder.add_buffer_listener(sink.add)
    target = target_type()
    sink.attach(target, "call-1")
    for i in range(100, 200):
        recorder.bot_audio(frame(i), RATE, 1, (i + 1) * FRAME_NS)
    recorder.stop()
    assert target.got and all(type(pcm) is kind for pcm in target.got)
    assert [bytes(pcm) for pcm in target.got] == got.at_hand_out[-len(target.got) :]
    assert sink.bytes == sum(len(bytes(pcm)) for pcm in target.got)
