"""Speech for offline calls: espeak-ng says a line, as 16-bit mono PCM at any rate."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import wave
from pathlib import Path

import numpy as np
import soxr

ESPEAK = shutil.which("espeak-ng")


async def synthesize(text: str, sample_rate: int, *, voice: str = "en-us", wpm: int = 175) -> bytes:
    """``text`` spoken by espeak-ng, trimmed of its lead-in silence, at ``sample_rate``."""
    if ESPEAK is None:
        raise RuntimeError("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "say.wav"
        proc = await asyncio.create_subprocess_exec(
            ESPEAK, "-v", voice, "-s", str(wpm), "-w", str(path), text
        )
        if await proc.wait() != 0:
            raise RuntimeError(f"espeak-ng failed on {text!r}")
        with wave.open(str(path)) as w:
            rate = w.getframerate()
            samples = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    loud = np.flatnonzero(np.abs(samples) > 500)
    if loud.size:
        samples = samples[max(0, loud[0] - rate // 100) : loud[-1] + rate // 50]
    if rate != sample_rate:
        samples = soxr.resample(samples, rate, sample_rate).astype(np.int16)
    return samples.tobytes()


def rms(pcm: bytes) -> float:
    """Root mean square of 16-bit mono PCM (0 for no samples)."""
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0
