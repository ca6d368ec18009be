"""Recorder chunks to the shared outbox: numbered in the order Pipecat emits them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from opentelemetry.trace import SpanContext

from .. import _errors

# What the reference uploads per chunk; the spliced recorder's buffer holds this per track.
DEFAULT_CHUNK_BYTES = 256 * 1024

# A chunk's PCM: bytes, or the recorder's own read-only buffer, handed over without a copy.
PCM = bytes | memoryview


@dataclass(frozen=True, slots=True)
class Chunk:
    """One numbered piece of a call's recording, on its way to the outbox."""

    call_id: str
    index: int
    pcm: PCM
    sample_rate: int | None = None
    num_channels: int | None = None


class ChunkTarget(Protocol):
    def submit_chunk(
        self,
        call_id: str,
        index: int,
        pcm: bytes,
        *,
        sample_rate: int | None = None,
        num_channels: int | None = None,
    ) -> bool: ...


@runtime_checkable
class BufferTarget(Protocol):
    """A target that takes the recorder's read-only buffer as it is (the Roark engine).

    It only keeps a reference (never mutates, never closes): the buffer is freed when the
    target drops it. Every other target gets ``bytes``.
    """

    takes_buffers: bool

    def submit_chunk(
        self,
        call_id: str,
        index: int,
        pcm: PCM,
        *,
        sample_rate: int | None = None,
        num_channels: int | None = None,
    ) -> bool: ...


@runtime_checkable
class TraceBoundTarget(Protocol):
    """A target that sends each call's chunks in the call span's trace (fleet mode)."""

    def bind_call(self, call_id: str, span_context: SpanContext) -> None: ...


class ChunkSink:
    """Numbers and hands over; never waits on the network (the engine's threads do).

    Every chunk consumes its index, handed over or not: if one is ever lost, Roark
    sees the gap instead of a shorter WAV with every later offset wrong.
    """

    def __init__(self) -> None:
        self.target: ChunkTarget | BufferTarget | None = None
        self.call_id: str | None = None
        self.chunks = 0
        self.bytes = 0
        self.failures = 0
        self.sample_rate: int | None = None
        self.num_channels: int | None = None
        self.closed = False
        # Chunks that came before the call was opened; handed over on attach.
        self._early: list[tuple[bytes, int, int]] = []

    def attach(self, target: ChunkTarget | BufferTarget | None, call_id: str) -> None:
        self.target = target
        self.call_id = call_id
        early, self._early = self._early, []
        for audio, sample_rate, num_channels in early:
            self.add(audio, sample_rate, num_channels)

    def close(self) -> None:
        """No more chunks: anything still waiting for the call to open is lost, and counted."""
        self.closed = True
        if self._early:
            self.failures += len(self._early)
            _errors.count_drop("audio_no_call", len(self._early))
            self._early = []

    async def on_audio_data(
        self, _processor: object, audio: bytes, sample_rate: int, num_channels: int
    ) -> None:
        with _errors.guard("on_audio_data"):
            self.add(audio, sample_rate, num_channels)

    def add(self, audio: PCM, sample_rate: int, num_channels: int) -> None:
        if self.closed or not audio:
            return
        if self.call_id is None:
            self._early.append((bytes(audio), sample_rate, num_channels))
            return
        if self.target is None:
            self.failures += 1
            _errors.count_drop("audio_no_exporter")
            return
        index = self.chunks
        self.chunks += 1
        self.sample_rate = sample_rate
        self.num_channels = num_channels
        target, call_id = self.target, self.call_id
        if isinstance(target, BufferTarget):
            accepted = target.submit_chunk(
                call_id, index, audio, sample_rate=sample_rate, num_channels=num_channels
            )
        else:  # a target of the user's own gets bytes
            accepted = target.submit_chunk(
                call_id, index, bytes(audio), sample_rate=sample_rate, num_channels=num_channels
            )
        if accepted:
            self.bytes += len(audio)
        else:  # the target counted and logged the loss; the index stays used
            self.failures += 1
