"""Every touch of Pipecat (and OTel SDK) internals and version differences lives here."""

from __future__ import annotations

import asyncio
import inspect
import sys
import time
from collections.abc import Mapping
from typing import Any, cast

from opentelemetry.context import Context
from opentelemetry.sdk.trace import SpanLimits
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.util.types import AttributeValue
from pipecat.frames.frames import CancelFrame, EndFrame, Frame, StartFrame
from pipecat.observers.base_observer import BaseObserver
from pipecat.processors.audio.audio_buffer_processor import AudioBufferProcessor
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport

from ._capture import Service
from ._errors import logger

# Pipecat's service base classes, looked up only once their modules are loaded
# (importing them costs ~0.1 s; a pipeline that uses one has already paid it).
_SERVICE_BASES: tuple[tuple[Service, str, str], ...] = (
    ("stt", "pipecat.services.stt_service", "STTService"),
    ("tts", "pipecat.services.tts_service", "TTSService"),
    ("llm", "pipecat.services.llm_service", "LLMService"),
)


def service_kind(processor: object) -> Service | None:
    """STT, LLM or TTS: by Pipecat's base classes, else by the class name (``...STT...``)."""
    for kind, module, name in _SERVICE_BASES:
        base = getattr(sys.modules.get(module), name, None)
        if isinstance(base, type) and isinstance(processor, base):
            return kind
    class_name = type(processor).__name__.upper()
    for kind, _, _ in _SERVICE_BASES:
        if kind.upper() in class_name:
            return kind
    return None


def is_output_transport(processor: object) -> bool:
    return isinstance(processor, BaseOutputTransport)


def follows_output_transport(processor: object) -> bool:
    """Whether the output transport is the processor just before this one."""
    return isinstance(getattr(processor, "previous", None), BaseOutputTransport)


def first_pushes_only() -> dict[str, bool]:
    """``BaseObserver`` arguments to observe first pushes only, where Pipecat has the mode."""
    if "observe_every_push" in inspect.signature(BaseObserver.__init__).parameters:
        return {"observe_every_push": False}
    return {}


def end_reason(frame: Frame) -> str:
    """The reason an ``EndFrame``/``CancelFrame`` carries where this Pipecat has one."""
    if isinstance(frame, (EndFrame, CancelFrame)):
        reason = getattr(frame, "reason", None)
        return str(reason) if reason else "agent-ended"
    return "unknown"


def vad_secs_ns(frame: Frame, name: str) -> int:
    """A VAD frame's ``start_secs``/``stop_secs`` in ns; 0 where this Pipecat lacks it."""
    value = getattr(frame, name, 0.0)
    return int(value * 1e9) if isinstance(value, (int, float)) and value > 0 else 0


def is_input_transport(processor: object) -> bool:
    return isinstance(processor, BaseInputTransport)


def output_sample_rate(frame: StartFrame) -> int:
    """The pipeline's output rate, as its StartFrame carries it; 0 if it does not."""
    try:
        # Deprecated field since 1.8 (still set); read without the warning.
        rate = object.__getattribute__(frame, "audio_out_sample_rate")
    except AttributeError:
        return 0
    return rate if isinstance(rate, int) else 0


def is_recording(processor: AudioBufferProcessor) -> bool:
    """Whether an ``AudioBufferProcessor`` is armed (no public accessor exists)."""
    return bool(getattr(processor, "_recording", False))


def clock_offset_ns(processor: object) -> int | None:
    """Unix-ns minus pipeline-clock-ns, so push timestamps map to wall time."""
    get_clock = getattr(processor, "get_clock", None)
    if get_clock is None:
        return None
    try:
        clock_now = int(get_clock().get_time())
    except Exception:
        return None
    if clock_now <= 0:
        return None
    return time.time_ns() - clock_now


def pipeline_worker(processor: FrameProcessor) -> Any | None:
    """The PipelineWorker (PipelineTask before 1.3) running a processor."""
    for name in ("pipeline_worker", "pipeline_task"):
        try:
            worker = getattr(processor, name, None)
        except Exception:
            continue
        if worker is not None:
            return worker
    return None


def start_frame_tracing_context(frame: StartFrame) -> Any:
    # Deprecated field since 1.8; the only way in before workers were reachable.
    return object.__getattribute__(frame, "tracing_context")


class PipecatTracing:
    """The conversation id and span context of Pipecat's own tracing for one pipeline.

    With the worker (Pipecat >= 1.10) we can give Pipecat our id; with only the
    StartFrame's tracing context we can read Pipecat's id and span, not set them.
    """

    def __init__(self, worker: Any = None, context: Any = None) -> None:
        self._worker: Any = worker
        self._observer: Any = getattr(worker, "turn_trace_observer", None)
        self._context: Any = getattr(worker, "_tracing_context", None) or context
        self.enabled = self._context is not None
        self.can_set_id = self._observer is not None and self._context is not None

    def pipecat_conversation_id(self) -> str | None:
        """The id on Pipecat's conversation span, once it started."""
        value = getattr(self._context, "conversation_id", None)
        return value if isinstance(value, str) and value else None

    def task_conversation_id(self) -> str | None:
        """The id given to ``PipelineTask(conversation_id=...)``, if any."""
        value = getattr(self._worker, "_conversation_id", None)
        return value if isinstance(value, str) and value else None

    def adopt_conversation_id(self, conversation_id: str) -> str:
        """Make Pipecat's ``conversation`` span carry our id; returns the id both use.

        Runs before Pipecat starts its conversation span (processor setup precedes
        the StartFrame). If it lost that race, Pipecat's span is re-labelled.
        """
        if not self.can_set_id:
            return conversation_id
        started = getattr(self._observer, "_conversation_span", None)
        if started is None:
            self._observer._conversation_id = conversation_id
            return conversation_id
        if self._context.conversation_id == conversation_id:
            return conversation_id
        started.set_attribute("conversation.id", conversation_id)
        self._observer._conversation_id = conversation_id
        self._context._conversation_id = conversation_id
        return conversation_id

    def add_conversation_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        """Put attributes on Pipecat's ``conversation`` span, where Pipecat lets us reach it.

        Before the span starts, through the turn trace observer's copy of
        ``PipelineTask(additional_span_attributes=...)``; after, on the span itself.
        """
        observer = self._observer
        if observer is None or not attributes:
            return
        span = getattr(observer, "_conversation_span", None)
        if span is not None:
            span.set_attributes(attributes)
            return
        current = getattr(observer, "_additional_span_attributes", None) or {}
        # A new dict: the old one may be the very dict the user gave PipelineTask.
        observer._additional_span_attributes = {**current, **attributes}

    def conversation_context(self) -> Context | None:
        if not self.enabled:
            return None
        ctx: Context | None = self._context.get_conversation_context()
        return ctx

    async def wait_for_conversation_context(self, timeout: float = 0.25) -> Context | None:
        """Pipecat starts its span on its own observer queue; give it a moment."""
        if not self.enabled:
            return None
        deadline = time.monotonic() + timeout
        while (ctx := self.conversation_context()) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if ctx is None:
            logger.debug("Pipecat's conversation span was not started in time; call span is a root")
        return ctx


# AudioBufferProcessor events only its own buffers can serve (separate tracks, turns).
_BUFFER_EVENTS = (
    "on_track_audio_data",
    "on_user_turn_audio",
    "on_bot_turn_audio",
    "on_user_turn_audio_data",
    "on_bot_turn_audio_data",
)


def has_buffer_event_handlers(processor: AudioBufferProcessor) -> bool:
    """Whether anyone listens to an event that needs Pipecat's per-track buffers."""
    registry: Mapping[str, Any] = getattr(processor, "_event_handlers", {})
    return any(getattr(registry.get(name), "handlers", None) for name in _BUFFER_EVENTS)


async def wait_for_audio_handlers(processor: AudioBufferProcessor, timeout: float) -> bool:
    """Wait for ``on_audio_data`` handler tasks Pipecat runs in the background.

    Returns False when some are still running at the deadline (they are left alone).
    """
    tasks = [
        task
        for name, task in list(getattr(processor, "_event_tasks", ()))
        if name == "on_audio_data" and not task.done()
    ]
    if not tasks:
        return True
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    return not pending


class PositionTrackingRecorder(AudioBufferProcessor):
    """An AudioBufferProcessor that knows how far into its recording it is.

    Reads the processor's private buffers and hooks its private emit step: the
    only way to know the sample position Pipecat will give the audio.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Per-track bytes already handed out in chunks since recording started.
        self._emitted_track_bytes = 0

    def position_ms(self, *, bot: bool) -> float:
        """How far into the recording one track (L = user, R = bot) has been written."""
        me: Any = self
        rate = int(me._sample_rate or 0)
        if rate <= 0:
            return 0.0
        buffered = len(me._bot_audio_buffer if bot else me._user_audio_buffer)
        return (self._emitted_track_bytes + buffered) * 1000 / (2 * rate)

    async def start_recording(self) -> None:
        if not is_recording(self):
            self._emitted_track_bytes = 0
        await cast(Any, super()).start_recording()

    async def stop_recording(self) -> None:
        # Pipecat's is untyped: a typed seam for subclasses that extend it.
        await cast(Any, super()).stop_recording()

    async def _call_on_audio_data_handler(self) -> None:
        me: Any = self
        if me._recording:
            self._emitted_track_bytes += max(len(me._user_audio_buffer), len(me._bot_audio_buffer))
        await cast(Any, super())._call_on_audio_data_handler()


async def start_recording(processor: Any) -> None:
    await processor.start_recording()


async def stop_recording(processor: Any) -> None:
    await processor.stop_recording()


def sdk_provider_parts(provider: SdkTracerProvider) -> tuple[SpanLimits, list[SpanExporter]]:
    """An SDK provider's span limits and the exporters behind its processors.

    The SDK has no public accessor for either: its private fields are read here only.
    Multi-processors are walked (``_span_processors``); Batch/Simple expose ``span_exporter``.
    """
    limits = getattr(provider, "_span_limits", None)
    exporters: list[SpanExporter] = []
    pending: list[Any] = [getattr(provider, "_active_span_processor", None)]
    while pending:
        processor = pending.pop(0)
        children = getattr(processor, "_span_processors", None)
        if isinstance(children, (tuple, list)):
            pending[:0] = children
            continue
        exporter = getattr(processor, "span_exporter", None)
        if isinstance(exporter, SpanExporter):
            exporters.append(exporter)
    return (limits if isinstance(limits, SpanLimits) else SpanLimits()), exporters
