"""Where a moment of the call falls in the recording: capture rule 13, on the WAV's own clock.

The recording is not wall time: Pipecat's AudioBufferProcessor only fills gaps over
200 ms with silence, so shorter pauses vanish from the PCM and offsets measured on the
wall clock drift away from the audio. The recorder reports, per audio frame it keeps,
the pipeline-clock time and the sample position it landed at; a breakpoint is kept
only where that drifts from the last one, so memory stays small.
"""

from __future__ import annotations

from bisect import bisect_right

# Drift below this is jitter, not worth a breakpoint.
_TOLERANCE_MS = 20


class RecordingTimeline:
    """Piecewise-linear map from pipeline-clock ns to milliseconds into the recording."""

    def __init__(self) -> None:
        self._clock_ns: list[int] = []
        self._position_ms: list[float] = []

    def __len__(self) -> int:
        return len(self._clock_ns)

    def observe(self, clock_ns: int, position_ms: float) -> None:
        """An audio frame starting at ``position_ms`` of the recording arrived at ``clock_ns``."""
        clocks = self._clock_ns
        if clocks and clock_ns >= clocks[-1]:
            # Per audio frame: frames come in clock order, so no search.
            expected: float | None = self._position_ms[-1] + (clock_ns - clocks[-1]) / 1_000_000
        else:
            expected = self.position_ms(clock_ns)
        if expected is not None and abs(expected - position_ms) < _TOLERANCE_MS:
            return
        if self._clock_ns and clock_ns < self._clock_ns[-1]:
            return
        self._clock_ns.append(clock_ns)
        self._position_ms.append(position_ms)

    def position_ms(self, clock_ns: int) -> float | None:
        """None before any audio; never below sample 0."""
        if not self._clock_ns:
            return None
        i = bisect_right(self._clock_ns, clock_ns) - 1
        if i < 0:
            # Just before this track's first audio (an edge precedes its audio a little).
            return max(0.0, self._position_ms[0] - (self._clock_ns[0] - clock_ns) / 1_000_000)
        position = self._position_ms[i] + (clock_ns - self._clock_ns[i]) / 1_000_000
        if i + 1 < len(self._clock_ns):
            # A pause the recording dropped: the moment maps to where the next audio starts.
            position = min(position, self._position_ms[i + 1])
        return position
