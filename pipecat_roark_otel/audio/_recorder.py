"""The default recorder: the stereo call (L = user, R = bot) from the audio frames observed.

No processor in the pipeline. The observer hands over each audio frame once, at the
hop where it is heard (leaving the input transport, leaving the output transport),
with its push timestamp. Placement follows Pipecat's ``AudioBufferProcessor`` so the
two recorders agree: a track is padded with silence over pauses longer than 200 ms
of pipeline clock, and the quiet track is brought level with the one being written.
Unlike it, a track stays at its own rate until a batch of it is resampled and written
into the stereo chunk, which lives in an anonymous mapping of its own and is handed out
without a copy.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from typing import Final

import numpy as np
import soxr

from ._chunks import DEFAULT_CHUNK_BYTES
from ._timeline import RecordingTimeline

Listener = Callable[[bytes, int, int], object]
# Gets the chunk itself, read-only: valid for as long as the listener keeps a reference.
BufferListener = Callable[[memoryview, int, int], object]

# Pipecat's AudioBufferProcessor threshold: a longer gap between frames is silence.
_GAP_NS: Final = 200_000_000
# Resample and interleave in batches of this many bytes: far cheaper than per frame, and
# short enough that no single step holds the loop for long (~0.15 ms for a resampled
# 0.5 s of 16 kHz audio; 32 KiB doubled the slowest steps for no CPU saved). A track
# already at the recording's rate is only interleaved, in smaller batches that hold less.
_RESAMPLED_BATCH_BYTES: Final = 16 * 1024
_BATCH_BYTES: Final = 8 * 1024
# soxr sizes its buffers to what it is fed: ~75 KB per stream in pieces this small, 117 KB
# for 8 KiB calls, 227 KB for 32 KiB. At 100 calls, one soxr call per 8 KiB batch measured
# 1.0-1.1 MB/call of extra RSS against 0.6 this way, for the same CPU.
_SOXR_PIECE: Final = 2048  # samples
_NO_SAMPLES: Final = np.zeros(0, dtype=np.int16)
# Private, not shared: an anonymous shared mapping is shmem, dearer to fault in and to unmap
# (map, fill and unmap 256 KiB: 76 against 100-109 µs). Windows has no flags.
_PRIVATE: Final[dict[str, int]] = (
    {"flags": mmap.MAP_PRIVATE} if hasattr(mmap, "MAP_PRIVATE") else {}
)
_ZEROS: Final = memoryview(bytes(64 * 1024))


def _pad(buf: bytearray, nbytes: int) -> None:
    while nbytes > 0:
        n = min(nbytes, len(_ZEROS))
        buf += _ZEROS[:n]
        nbytes -= n


class _Track:
    """One channel at its own sample rate; ``level`` is silence owed before the next audio."""

    __slots__ = (
        "batch",
        "buf",
        "channel",
        "consumed",
        "convert",
        "convert_rate",
        "last_ns",
        "level",
        "rate",
        "speaking",
        "stream",
        "timeline",
        "written",
    )

    def __init__(self, channel: int) -> None:
        self.channel = channel  # in the stereo chunk: 0 = L (user), 1 = R (bot)
        self.buf = bytearray()  # at ``rate``, not yet in the chunk
        self.batch = _BATCH_BYTES  # ``buf`` goes into the chunk once it holds this much
        self.consumed = 0  # samples (at ``rate``) moved from ``buf`` to the chunk
        self.written = 0  # samples (at the recording's rate) in the chunk, this chunk
        self.rate = 0
        self.level = 0  # samples (at ``rate``) the track is known to reach, this chunk
        self.last_ns: int | None = None
        self.speaking = False
        self.stream: soxr.ResampleStream | None = None  # track rate -> recording rate
        self.convert: soxr.ResampleStream | None = None  # a stray frame -> track rate
        self.convert_rate = 0
        self.timeline = RecordingTimeline()


class _Chunk:
    """The stereo chunk being filled, interleaved as each batch of a track comes in.

    Its samples live in an anonymous mapping, handed out as they are (no copy); the next
    chunk starts in a fresh one. A handed-out mapping belongs to whoever holds its view and
    goes back to the system when the last reference drops (once the delivery thread has
    persisted it), never to the C heap, where freed chunk-sized blocks stay resident and
    fragment. Pages count only once written, so a short tail costs what it holds.
    """

    __slots__ = ("_map", "capacity", "samples")

    def __init__(self, nbytes: int) -> None:
        # Room for a chunk plus what the frame that completes it brings; more only after a
        # long pause. Unwritten pages of a mapping cost nothing.
        self.capacity = max(mmap.PAGESIZE, nbytes + nbytes // 2)
        self.samples = _NO_SAMPLES
        self._map: mmap.mmap | None = None

    def put(self, track: _Track, samples: np.ndarray) -> None:
        start = track.written
        end = start + len(samples)
        if 2 * end > len(self.samples):
            self._grow(2 * end)
        self.samples[2 * start + track.channel : 2 * end : 2] = samples
        track.written = end

    def _grow(self, count: int) -> None:
        """A mapping for at least ``count`` samples, what is written so far carried over."""
        nbytes = max(2 * count, 4 * len(self.samples), self.capacity)
        mapped = mmap.mmap(-1, nbytes, **_PRIVATE)
        samples = np.frombuffer(mapped, dtype=np.int16)
        old = self.samples
        if len(old):  # a long pause padded in one go outgrew the mapping
            samples[: len(old)] = old
        self.samples = samples
        self._map = mapped

    def move(self, track: _Track, out_rate: int, *, last: bool = False) -> None:
        """``buf`` into the chunk, resampled to the recording's rate if it is not at it."""
        buf = track.buf
        track.consumed += len(buf) >> 1
        samples = np.frombuffer(buf, dtype=np.int16)
        if track.rate not in (0, out_rate):
            if track.stream is None:
                track.stream = soxr.ResampleStream(
                    track.rate, out_rate, 1, dtype="int16", quality="HQ"
                )
            stream = track.stream
            n = len(samples)
            for i in range(0, max(n, 1), _SOXR_PIECE):
                end = i + _SOXR_PIECE
                self.put(track, stream.resample_chunk(samples[i:end], last=last and end >= n))
        elif len(samples):
            self.put(track, samples)
        del samples  # releases ``buf`` so it can be cleared
        buf.clear()

    def close_track(self, track: _Track, out_rate: int, *, last: bool) -> None:
        """The track's part of this chunk, silence owed included; its counters restart."""
        _pad(track.buf, 2 * (track.level - track.consumed) - len(track.buf))
        if track.buf or (last and track.stream is not None):
            self.move(track, out_rate, last=last)
        track.consumed = 0
        track.level = 0

    def take(self, n: int) -> memoryview:
        """The first ``n`` stereo samples as PCM, handed over; the next chunk starts afresh."""
        mapped = self._map
        self.release()
        if mapped is None:
            return memoryview(b"")
        return memoryview(mapped)[: 4 * n].toreadonly()

    def release(self) -> None:
        """Forgets the mapping; it is unmapped once nothing else holds a view of it."""
        self.samples = _NO_SAMPLES
        self._map = None


class ObservedRecorder:
    """Stereo PCM from observed frames, handed out in ~``chunk_bytes`` chunks.

    Listeners get ``(pcm, sample_rate, num_channels)`` for each chunk, in order, on
    the observer's task: they must not block (the Roark hand-off only enqueues).
    """

    def __init__(self, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        # Per track: a stereo chunk of ``chunk_bytes`` holds this many samples of each.
        self._chunk_samples = max(1, chunk_bytes // 4)
        self._listeners: list[Listener] = []
        self._buffer_listeners: list[BufferListener] = []
        self._user = _Track(0)
        self._bot = _Track(1)
        self._chunk = _Chunk(chunk_bytes)
        self.user_timeline = self._user.timeline
        self.bot_timeline = self._bot.timeline
        self.sample_rate = 0
        self.recording = False
        self._emitted = 0  # samples per track already handed out

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def add_buffer_listener(self, listener: BufferListener) -> None:
        """Gets each chunk as a read-only view of the recorder's own buffer: no copy.

        The buffer is never reused: it stays intact for as long as a reference is held and
        is returned to the system when the last one drops.
        """
        self._buffer_listeners.append(listener)

    def start(self, sample_rate: int) -> None:
        """Capture rule 15: the pipeline's output rate (its StartFrame); 0: the first frame's."""
        if self.recording or self._emitted:
            return
        self.sample_rate = max(0, sample_rate)
        self.recording = True

    def stop(self) -> None:
        """The tail goes out now; later frames are ignored."""
        if not self.recording:
            return
        self.recording = False
        self._emit(last=True)

    def user_speaking(self, speaking: bool) -> None:
        self._user.speaking = speaking

    def bot_speaking(self, speaking: bool) -> None:
        self._bot.speaking = speaking

    def user_audio(self, audio: bytes, sample_rate: int, num_channels: int, clock_ns: int) -> None:
        if self.recording:
            self._write(self._user, self._bot, audio, sample_rate, num_channels, clock_ns)

    def bot_audio(self, audio: bytes, sample_rate: int, num_channels: int, clock_ns: int) -> None:
        if self.recording:
            self._write(self._bot, self._user, audio, sample_rate, num_channels, clock_ns)

    # -- placement ------------------------------------------------------------

    def _write(
        self,
        track: _Track,
        other: _Track,
        audio: bytes,
        rate: int,
        channels: int,
        clock_ns: int,
    ) -> None:
        if rate != track.rate or channels != 1 or not audio:
            audio = self._normalise(track, audio, rate, channels)
            if not audio:
                return
        # Per audio frame: locals, no calls but the timeline's.
        track_rate = track.rate
        out_rate = self.sample_rate
        buf = track.buf
        n = len(audio) >> 1
        duration_ns = n * 1_000_000_000 // track_rate
        have = track.consumed + (len(buf) >> 1)
        at = have if have >= track.level else track.level
        last = track.last_ns
        if last is not None and clock_ns - last - duration_ns > _GAP_NS:
            at += (clock_ns - last - duration_ns) * track_rate // 1_000_000_000
        track.last_ns = clock_ns
        at_out = at if track_rate == out_rate else at * out_rate // track_rate
        if not other.speaking:
            other_rate = other.rate
            other_at = at_out if other_rate in (0, out_rate) else at_out * other_rate // out_rate
            if other_at > other.level:
                other.level = other_at
            other.last_ns = clock_ns
        # Capture rule 13: this frame's audio began one frame ago and lands at ``at_out``.
        track.timeline.observe(clock_ns - duration_ns, (self._emitted + at_out) * 1000 / out_rate)
        if at > have:
            _pad(buf, 2 * (at - have))
        buf += audio
        if at_out + n * out_rate // track_rate >= self._chunk_samples:
            self._emit(last=False)
        elif len(buf) >= track.batch:
            self._chunk.move(track, out_rate)

    def _normalise(self, track: _Track, audio: bytes, rate: int, channels: int) -> bytes:
        """The rare frame: empty, not mono, the track's first, or at another rate."""
        if not audio or rate <= 0:
            return b""
        if channels != 1:
            audio = _mono(audio, channels)
        if self.sample_rate == 0:
            # The StartFrame did not say: the first audio decides.
            self.sample_rate = rate
        if track.rate == 0:
            # Silence owed so far was counted at the recording's rate.
            track.level = track.level * rate // self.sample_rate
            track.rate = rate
            if rate != self.sample_rate:
                track.batch = _RESAMPLED_BATCH_BYTES
        elif rate != track.rate:
            audio = _convert(track, audio, rate)
        return audio

    def _emit(self, *, last: bool) -> None:
        rate = self.sample_rate
        user, bot, chunk = self._user, self._bot, self._chunk
        chunk.close_track(user, rate, last=last)
        chunk.close_track(bot, rate, last=last)
        n = max(user.written, bot.written)
        user.written = bot.written = 0
        if n:
            self._emitted += n
            pcm = chunk.take(n)
            for buffer_listener in self._buffer_listeners:
                buffer_listener(pcm, rate, 2)
            if self._listeners:
                copy = bytes(pcm)
                for listener in self._listeners:
                    listener(copy, rate, 2)
        if last:
            chunk.release()


def _mono(audio: bytes, channels: int) -> bytes:
    samples = np.frombuffer(audio, dtype=np.int16)
    usable = len(samples) - len(samples) % channels
    mixed = samples[:usable].reshape(-1, channels).mean(axis=1)
    return bytes(mixed.astype(np.int16).tobytes())


def _convert(track: _Track, audio: bytes, rate: int) -> bytes:
    """A frame at another rate than the track's first (rare): brought to the track's rate."""
    if track.convert is None or track.convert_rate != rate:
        track.convert_rate = rate
        track.convert = soxr.ResampleStream(rate, track.rate, 1, dtype="int16", quality="HQ")
    out = track.convert.resample_chunk(np.frombuffer(audio, dtype=np.int16))
    return bytes(out.astype(np.int16, copy=False).tobytes())
