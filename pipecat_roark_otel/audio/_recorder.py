"""The default recorder: the stereo call (L = user, R = bot) from the audio frames observed.

No processor in the pipeline. The observer hands over each audio frame once, at the
hop where it is heard (leaving the input transport, leaving the output transport),
with its push timestamp. Placement follows Pipecat's ``AudioBufferProcessor`` so the
two recorders agree: a track is padded with silence over pauses longer than 200 ms
of pipeline clock, and the quiet track is brought level with the one being written.
Unlike it, the user track stays at its own rate and is resampled once per chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
import soxr

from ._chunks import DEFAULT_CHUNK_BYTES
from ._timeline import RecordingTimeline

Listener = Callable[[bytes, int, int], object]

# Pipecat's AudioBufferProcessor threshold: a longer gap between frames is silence.
_GAP_NS: Final = 200_000_000
# Resample in batches of this many bytes (~0.25 s at 16 kHz): far cheaper than per
# frame, and short enough that no single step holds the loop for long.
_RESAMPLE_BYTES: Final = 8192
_ZEROS: Final = memoryview(bytes(64 * 1024))


def _pad(buf: bytearray, nbytes: int) -> None:
    while nbytes > 0:
        n = min(nbytes, len(_ZEROS))
        buf += _ZEROS[:n]
        nbytes -= n


class _Track:
    """One channel at its own sample rate; ``level`` is silence owed before the next audio."""

    __slots__ = (
        "buf",
        "consumed",
        "convert",
        "convert_rate",
        "last_ns",
        "level",
        "out",
        "rate",
        "speaking",
        "stream",
        "timeline",
    )

    def __init__(self) -> None:
        self.buf = bytearray()  # at ``rate``, not yet resampled
        self.out = bytearray()  # resampled to the recording's rate, this chunk
        self.consumed = 0  # samples (at ``rate``) moved from ``buf`` to ``out``, this chunk
        self.rate = 0
        self.level = 0  # samples (at ``rate``) the track is known to reach, this chunk
        self.last_ns: int | None = None
        self.speaking = False
        self.stream: soxr.ResampleStream | None = None  # track rate -> recording rate
        self.convert: soxr.ResampleStream | None = None  # a stray frame -> track rate
        self.convert_rate = 0
        self.timeline = RecordingTimeline()

    def resample(self, out_rate: int, *, last: bool = False) -> None:
        """Move ``buf`` to ``out`` at the recording's rate."""
        if self.stream is None:
            self.stream = soxr.ResampleStream(self.rate, out_rate, 1, dtype="int16", quality="HQ")
        self.consumed += len(self.buf) >> 1
        samples = np.frombuffer(self.buf, dtype=np.int16)
        out = self.stream.resample_chunk(samples, last=last)
        del samples  # releases ``buf`` so it can be cleared
        self.out += out.astype(np.int16, copy=False).tobytes()
        self.buf.clear()

    def take(self, out_rate: int, *, last: bool) -> bytes:
        """The track so far at the recording's rate; empties it."""
        _pad(self.buf, 2 * (self.level - self.consumed) - len(self.buf))
        if self.rate not in (0, out_rate) and (self.buf or (last and self.stream is not None)):
            self.resample(out_rate, last=last)
        data = bytes(self.out) + bytes(self.buf)
        self.buf.clear()
        self.out.clear()
        self.consumed = 0
        self.level = 0
        return data


class ObservedRecorder:
    """Stereo PCM from observed frames, handed out in ~``chunk_bytes`` chunks.

    Listeners get ``(pcm, sample_rate, num_channels)`` for each chunk, in order, on
    the observer's task: they must not block (the Roark hand-off only enqueues).
    """

    def __init__(self, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        # Per track: a stereo chunk of ``chunk_bytes`` holds this many samples of each.
        self._chunk_samples = max(1, chunk_bytes // 4)
        self._listeners: list[Listener] = []
        self._user = _Track()
        self._bot = _Track()
        self.user_timeline = self._user.timeline
        self.bot_timeline = self._bot.timeline
        self.sample_rate = 0
        self.recording = False
        self._emitted = 0  # samples per track already handed out

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

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
        elif track_rate != out_rate and len(buf) >= _RESAMPLE_BYTES:
            track.resample(out_rate)

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
        elif rate != track.rate:
            audio = _convert(track, audio, rate)
        return audio

    def _emit(self, *, last: bool) -> None:
        rate = self.sample_rate
        user = self._user.take(rate, last=last)
        bot = self._bot.take(rate, last=last)
        n = max(len(user), len(bot)) >> 1
        if n == 0:
            return
        stereo = np.zeros(2 * n, dtype=np.int16)
        stereo[0 : 2 * (len(user) >> 1) : 2] = np.frombuffer(user, dtype=np.int16)
        stereo[1 : 2 * (len(bot) >> 1) : 2] = np.frombuffer(bot, dtype=np.int16)
        self._emitted += n
        pcm = stereo.tobytes()
        for listener in self._listeners:
            listener(pcm, rate, 2)


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
