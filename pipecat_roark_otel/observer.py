"""RoarkObserver: frames in, an OTel call record out. No HTTP here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import TracerProvider
from opentelemetry.util.types import AttributeValue
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    FunctionCallCancelFrame,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    InputAudioRawFrame,
    InterruptionFrame,
    MetricsFrame,
    OutputAudioRawFrame,
    StartFrame,
    StopFrame,
    TranscriptionFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import LLMUsageMetricsData, TTFBMetricsData
from pipecat.observers.base_observer import BaseObserver, FrameProcessed, FramePushed
from pipecat.processors.audio.audio_buffer_processor import AudioBufferProcessor
from pipecat.processors.frame_processor import FrameDirection
from pipecat.utils.asyncio.task_manager import BaseTaskManager

from . import _attributes, _compat, _errors, _roark_path
from . import semconv as sc
from ._capture import CallCapture, Record, Redactor, Role, iso_from_ns, redacted
from ._identity import followed_call_id, initial_call_id, synced_call_id
from ._record import CallIdentity
from ._roark_path import CallWriter
from .audio._chunks import ChunkTarget, TraceBoundTarget
from .audio._recorder import ObservedRecorder
from .audio._source import AudioSource
from .config import RoarkSettings, resolve_settings
from .exporter._exporter import RoarkSpanExporter

if TYPE_CHECKING:
    # Pipecat >= 1.10 only; older releases never call on_processor_setup.
    from pipecat.observers.base_observer import ProcessorSetUp

Event = FramePushed | FrameProcessed
Handler = Callable[[Any], Awaitable[None] | None]


class RoarkObserver(BaseObserver):
    """Writes a Pipecat call as OTel spans and events keyed by ``conversation.id``.

    Roark's destination is ``exporter`` if given, else the ``RoarkSpanExporter`` on
    the tracer provider; with no SDK provider configured, the observer sets one up
    privately. Where the provider's sampler or span limits would cut the call,
    Roark's copy takes its own path (``_roark_path``).

    ``recording_target``: where the recording's chunks go. By default the Roark
    exporter's outbox in this process; in a fleet, ``OTLPRecordingTarget(logger_provider)``
    sends them as OTLP log records to the Collector and the bridge (no Roark key needed
    on this host then).
    """

    def __init__(
        self,
        *,
        agent_id: str,
        agent_name: str | None = None,
        agent_prompt: str | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        conversation_id: str | None = None,
        pipecat_call_id: str | None = None,
        runner_args: object = None,
        tracer_provider: TracerProvider | None = None,
        exporter: RoarkSpanExporter | None = None,
        audio_buffer_processor: AudioBufferProcessor | None = None,
        record_audio: bool = True,
        redact: Redactor | None = None,
        recording_target: ChunkTarget | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> None:
        # Capture rule 3: first pushes only, where Pipecat offers it (half the events); what
        # only a repeat push would show (rules 7 and 17) comes from the process events.
        super().__init__(**_compat.first_pushes_only())
        if not isinstance(agent_id, str) or not agent_id.strip():
            raise ValueError("agent_id must be a non-empty string (the customer-stable agent id)")
        if conversation_id and pipecat_call_id and conversation_id != pipecat_call_id:
            raise ValueError(
                "conversation_id and pipecat_call_id name the same id; pass one of them"
            )
        if exporter is not None and not isinstance(exporter, RoarkSpanExporter):
            raise ValueError("exporter must be a RoarkSpanExporter (Roark's destination)")
        if exporter is not None and (api_key is not None or base_url is not None):
            raise ValueError(
                "exporter and api_key/base_url both name Roark's destination; pass one of them"
            )
        self._exporter = exporter
        # Fleet mode: chunks leave as OTLP logs, spans through the user's OTLP exporter,
        # so this host needs no Roark key.
        self._recording_target = recording_target
        fleet = recording_target is not None and api_key is None
        self._settings = (
            None
            if exporter or fleet
            else self._resolve_settings(api_key, base_url, tracer_provider)
        )
        self._custom = _attributes.resolve(attributes)
        self._conversation_id, self._id_is_explicit = initial_call_id(
            conversation_id or pipecat_call_id, runner_args
        )
        self._identity_synced = False
        self._agent = (agent_id, agent_name, agent_prompt)
        self._tracer_provider = tracer_provider
        self._audio = AudioSource(record_audio=record_audio, user_processor=audio_buffer_processor)
        self._chunks = self._audio.chunks
        self._redact = redact
        self._capture = CallCapture()
        if not self._audio.anchored:
            self._capture.position_ms = self._recording_position
        self._record: CallWriter | None = None
        self._pending: list[Record] = []
        self._tracing = _compat.PipecatTracing(None)
        self._clock_offset: int | None = None
        self._seen: set[int] = set()
        self._opening: asyncio.Task[None] | None = None
        self._end_task: asyncio.Future[None] | None = None
        self._dispatch: dict[type, Handler | None] = {}
        self._processed: dict[type, Handler | None] = {}

    @staticmethod
    def _resolve_settings(
        api_key: str | None, base_url: str | None, provider: TracerProvider | None
    ) -> RoarkSettings | None:
        """Our own settings, or None to follow the RoarkSpanExporter on the provider."""
        try:
            return resolve_settings(api_key=api_key, base_url=base_url)
        except ValueError:
            seen = _roark_path.view(provider or trace.get_tracer_provider())
            if api_key is None and seen.exporters:
                return None
            raise

    # -- public ---------------------------------------------------------------

    @property
    def conversation_id(self) -> str:
        """The call id: Roark's ``pipecatCallId`` and ``conversation.id`` on every span."""
        return self._conversation_id

    @property
    def pipecat_call_id(self) -> str:
        return self._conversation_id

    @property
    def audio_processor(self) -> AudioBufferProcessor:
        """A recorder to splice after ``transport.output()``, for setups that want one.

        Not needed: by default the call is recorded from the frames the observer sees.
        Once spliced, it records instead (the ``audio_buffer_processor`` if one was given).
        """
        return self._audio.processor

    @property
    def recording(self) -> ObservedRecorder:
        """The hop-free recorder: ``add_listener(fn)`` gets each chunk it hands out."""
        return self._audio.recorder

    @property
    def trace_id(self) -> str | None:
        """Hex trace id of the call span, once the call has started."""
        return self._record.trace_id if self._record else None

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        """Add attributes to the call while it runs (say, once the customer is known).

        They land on our call span and, where Pipecat lets us, on its ``conversation``
        span. Never raises: a bad or late attribute is logged and counted.
        """
        with _errors.guard("set_attributes"):
            accepted = _attributes.accept(attributes, self._custom, self._conversation_id)
            if not accepted:
                return
            if self._record is not None and not self._record.set_custom(accepted):
                _attributes.reject_late(self._conversation_id, len(accepted))
                return
            self._custom.update(accepted)
            self._tracing.add_conversation_attributes(accepted)

    async def aflush(self, *, reason: str = "client-disconnected") -> None:
        """End the call now (wire to a transport's disconnect handler). Idempotent."""
        with _errors.guard("aflush"):
            await self._end(reason, time.time_ns())

    # -- pipecat hooks --------------------------------------------------------

    async def setup(self, task_manager: BaseTaskManager) -> None:
        await super().setup(task_manager)
        with _errors.guard("setup"):
            await self._audio.arm_user_processor()

    async def cleanup(self) -> None:
        """Pipecat drops an observer's unprocessed queue when the pipeline finishes.

        A lagging observer may not have seen the EndFrame yet: end the call here
        (as the EndFrame would have) or wait for the end already under way.
        """
        parent: Any = super()
        await parent.cleanup()
        with _errors.guard("cleanup"):
            await self._end("agent-ended", time.time_ns())

    async def on_processor_setup(self, data: ProcessorSetUp) -> None:
        if not self._identity_synced:
            with _errors.guard("on_processor_setup"):
                self._sync_identity(data.processor)

    async def on_pipeline_started(self) -> None:
        with _errors.guard("on_pipeline_started"):
            await self._open(started=True)

    async def on_push_frame(self, data: FramePushed) -> None:
        # Hot path: one dict lookup per push; audio goes on only at the hop it is heard.
        cls = type(data.frame)
        try:
            handler = self._dispatch[cls]
        except KeyError:
            handler = self._dispatch[cls] = self._handler_for(cls)
        if handler is None:
            return
        try:
            pending = handler(data)
            if pending is not None:
                await pending
        except Exception:
            # The guard, inline: a `with` block would cost every audio hop.
            if _errors.report("on_push_frame"):
                raise

    async def on_process_frame(self, data: FrameProcessed) -> None:
        # Hot path as above: audio ends at the lookup.
        cls = type(data.frame)
        try:
            handler = self._processed[cls]
        except KeyError:
            handler = self._processed[cls] = self._process_handler_for(cls)
        if handler is None:
            return
        try:
            pending = handler(data)
            if pending is not None:
                await pending
        except Exception:
            if _errors.report("on_process_frame"):
                raise

    # -- dispatch -------------------------------------------------------------

    def _handler_for(self, cls: type) -> Handler | None:
        user_audio: Handler | None = None
        bot_audio: Handler | None = None
        if self._audio.hop_free:
            user_audio, bot_audio = self._audio.on_user_audio, self._audio.on_bot_audio
        elif self._audio.anchored and self._capture.anchor_ns is None:
            user_audio = bot_audio = self._on_audio
        table: list[tuple[type | tuple[type, ...], Handler | None]] = [
            (InputAudioRawFrame, user_audio),
            (OutputAudioRawFrame, bot_audio),
            (TTSTextFrame, self._on_tts_text),
            (StartFrame, self._on_start),
            ((EndFrame, StopFrame, CancelFrame), self._on_end_frame),
            (MetricsFrame, self._on_metrics),
            (
                (
                    TranscriptionFrame,
                    UserStartedSpeakingFrame,
                    UserStoppedSpeakingFrame,
                    VADUserStartedSpeakingFrame,
                    VADUserStoppedSpeakingFrame,
                    BotStartedSpeakingFrame,
                    BotStoppedSpeakingFrame,
                    InterruptionFrame,
                    FunctionCallInProgressFrame,
                    FunctionCallResultFrame,
                    FunctionCallCancelFrame,
                ),
                self._on_once,
            ),
        ]
        for types, handler in table:
            if issubclass(cls, types):
                return handler
        return None

    def _process_handler_for(self, cls: type) -> Handler | None:
        """A processor handling a frame: the frames that passed the output transport."""
        audio: Handler | None = None
        if self._audio.anchored and self._capture.anchor_ns is None:
            audio = self._on_audio
        table: list[tuple[type | tuple[type, ...], Handler | None]] = [
            ((InputAudioRawFrame, OutputAudioRawFrame), audio),
            (StartFrame, self._on_start_processed),
            (TTSTextFrame, self._on_tts_text_processed),
            (InterruptionFrame, self._on_interruption_processed),
            ((EndFrame, StopFrame), self._on_end_processed),
        ]
        for types, handler in table:
            if issubclass(cls, types):
                return handler
        return None

    def _now(self, data: Event) -> int:
        if self._clock_offset is not None and data.timestamp > 0:
            return int(data.timestamp) + self._clock_offset
        return time.time_ns()

    def _recording_position(self, unix_ns: int, track: Role) -> float | None:
        if self._clock_offset is None:
            return None
        return self._audio.position_ms(unix_ns - self._clock_offset, track)

    def _on_audio(self, data: Event) -> None:
        # Capture rule 13, for a user's recorder: sample 0 is the first audio frame it keeps.
        if self._capture.anchor_ns is None and self._audio.kept_by_user_processor(data):
            self._capture.anchor_ns = self._now(data)
            # Anchored: audio frames need nothing more from us.
            for table in (self._dispatch, self._processed):
                for cls, handler in table.items():
                    if handler == self._on_audio:
                        table[cls] = None

    def _on_start(self, data: FramePushed) -> Awaitable[None] | None:
        if self._clock_offset is None:
            self._clock_offset = _compat.clock_offset_ns(data.source)
        if not self._identity_synced:
            self._sync_identity(data.source)
        if not self._tracing.enabled and isinstance(data.frame, StartFrame):
            self._tracing = _compat.PipecatTracing(
                context=_compat.start_frame_tracing_context(data.frame)
            )
        if self._audio.hop_free is None:
            self._audio.start(data.frame)
            # Audio frames are dispatched by what was just decided.
            self._dispatch.clear()
            self._processed.clear()
        if _compat.is_output_transport(data.source):
            self._capture.has_output_transport = True
        self._audio.see_start(data)
        # Pipecat without observer setup(): arm the user's recorder as early as we can.
        return self._audio.arm_user_processor()

    def _on_start_processed(self, data: FrameProcessed) -> None:
        if _compat.is_output_transport(data.processor):
            self._capture.has_output_transport = True
        self._audio.see_start_processed(data)

    @staticmethod
    def _past_output_transport(data: FrameProcessed) -> bool:
        """The processor right after the output transport handles it: it has played out."""
        return data.direction is FrameDirection.DOWNSTREAM and _compat.follows_output_transport(
            data.processor
        )

    def _on_tts_text_processed(self, data: FrameProcessed) -> None:
        # Capture rule 7: the words as played.
        if self._past_output_transport(data):
            self._tts_text(data, played=True)

    def _on_interruption_processed(self, data: FrameProcessed) -> None:
        # Capture rule 7: words played until the interruption got past the transport count.
        if self._past_output_transport(data):
            records = self._capture.interruption_played()
            if records:
                self._emit(records)

    def _on_end_processed(self, data: FrameProcessed) -> Awaitable[None] | None:
        # Capture rule 17: the call ends once the frame has played out.
        if self._past_output_transport(data) and self._first_sighting(data.frame):
            return self._end(_compat.end_reason(data.frame), self._now(data))
        return None

    def _on_tts_text(self, data: FramePushed) -> None:
        self._tts_text(data, played=_compat.is_output_transport(data.source))

    def _tts_text(self, data: Event, *, played: bool) -> None:
        frame = data.frame
        assert isinstance(frame, TTSTextFrame)
        if played:
            self._capture.has_output_transport = True
        records = self._capture.tts_text(
            frame.id,
            frame.text or "",
            bool(getattr(frame, "includes_inter_frame_spaces", False)),
            self._now(data),
            played=played,
            context_id=getattr(frame, "context_id", None),
        )
        if records:
            self._emit(records)

    def _on_metrics(self, data: FramePushed) -> None:
        """Pipecat's service metrics: the latency breakdown of the reply they belong to."""
        frame = data.frame
        assert isinstance(frame, MetricsFrame)
        if not self._first_sighting(frame):
            return
        for metrics in frame.data:
            if isinstance(metrics, TTFBMetricsData):
                service = _compat.service_kind(data.source)
                if service is not None:
                    self._capture.service_ttfb(service, metrics.value)
            elif isinstance(metrics, LLMUsageMetricsData):
                usage = metrics.value
                self._capture.llm_usage(usage.prompt_tokens, usage.completion_tokens)

    def _first_sighting(self, frame: Frame) -> bool:
        """Capture rules 1 and 2: one action per frame, and per broadcast pair."""
        if frame.id in self._seen:
            return False
        self._seen.add(frame.id)
        sibling = getattr(frame, "broadcast_sibling_id", None)
        return not (sibling is not None and sibling in self._seen)

    def _on_once(self, data: FramePushed) -> None:
        frame = data.frame
        if not self._first_sighting(frame):
            return
        now = self._now(data)
        cap = self._capture
        records: list[Record] = []
        if isinstance(frame, TranscriptionFrame):
            records = cap.transcription(
                frame.text or "",
                bool(getattr(frame, "includes_inter_frame_spaces", False)),
                now,
                frame_timestamp=getattr(frame, "timestamp", None),
                user_id=getattr(frame, "user_id", None),
                language=getattr(frame, "language", None),
            )
        elif isinstance(frame, UserStartedSpeakingFrame):
            self._audio.recorder.user_speaking(True)
            records = cap.user_started(now)
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._audio.recorder.user_speaking(False)
            cap.user_stopped(now)
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            cap.speech_started(now, _compat.vad_secs_ns(frame, "start_secs"))
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            cap.speech_stopped(now, _compat.vad_secs_ns(frame, "stop_secs"))
        elif isinstance(frame, BotStartedSpeakingFrame):
            self._audio.recorder.bot_speaking(True)
            records = cap.bot_started(now)
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._audio.recorder.bot_speaking(False)
            records = cap.bot_stopped(now)
        elif isinstance(frame, InterruptionFrame):
            records = cap.bot_stopped(now, interrupted=True)
        elif isinstance(frame, FunctionCallInProgressFrame):
            records = cap.tool_call(frame.tool_call_id, frame.function_name, frame.arguments, now)
        elif isinstance(frame, FunctionCallResultFrame):
            failed = bool(getattr(frame, "error", None))  # Pipecat >= 1.14
            final = getattr(getattr(frame, "properties", None), "is_final", True) is not False
            records = cap.tool_result(
                frame.tool_call_id, frame.result, now, failed=failed, final=final
            )
        elif isinstance(frame, FunctionCallCancelFrame) and self._record is not None:
            self._record.cancel_tool(str(frame.tool_call_id or ""), now)
        if records:
            self._emit(records)

    def _on_end_frame(self, data: FramePushed) -> Awaitable[None] | None:
        frame = data.frame
        # Capture rule 17: the call ends when the output transport passes it on.
        if (
            self._capture.has_output_transport
            and isinstance(frame, (EndFrame, StopFrame))
            and not _compat.is_output_transport(data.source)
        ):
            return None
        if not self._first_sighting(frame):
            return None
        return self._end(_compat.end_reason(frame), self._now(data))

    # -- the record -----------------------------------------------------------

    def _emit(self, records: list[Record]) -> None:
        if self._redact is not None:
            records = self._redacted(records)
        if self._record is None:
            self._pending.extend(records)
        else:
            self._record.add(records)

    def _redacted(self, records: list[Record]) -> list[Record]:
        assert self._redact is not None
        out = []
        for record in records:
            try:
                out.append(redacted(record, self._redact))
            except Exception:
                # Never record unredacted content: a failing hook drops the record.
                _errors.count_drop("redact_failed")
                if _errors.should_log("redact_failed"):
                    _errors.logger.exception("redact hook failed; the record was dropped")
        return out

    def _sync_identity(self, processor: Any) -> None:
        worker = _compat.pipeline_worker(processor)
        if worker is None:
            return
        self._identity_synced = True
        self._tracing = _compat.PipecatTracing(worker)
        self._tracing.add_conversation_attributes(self._custom)
        call_id = synced_call_id(
            self._conversation_id, self._id_is_explicit, self._tracing.task_conversation_id()
        )
        self._conversation_id = self._tracing.adopt_conversation_id(call_id)

    async def _open(self, *, started: bool) -> None:
        if self._record is not None:
            return
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._do_open(started))
        await asyncio.shield(self._opening)

    async def _do_open(self, started: bool) -> None:
        parent = await self._tracing.wait_for_conversation_context() if started else None
        if parent is None:
            parent = self._tracing.conversation_context()
        # Where we could not give Pipecat our id (older Pipecat): take or report its id.
        self._conversation_id = followed_call_id(
            self._conversation_id, self._id_is_explicit, self._tracing.pipecat_conversation_id()
        )
        start_ns = time.time_ns()
        agent_id, agent_name, agent_prompt = self._agent
        self._record = _roark_path.open_call(
            self._tracer_provider or trace.get_tracer_provider(),
            CallIdentity(self._conversation_id, agent_id, agent_name, agent_prompt),
            exporter=self._exporter,
            settings=self._settings,
            warn_without_exporter=self._recording_target is None,
            parent=parent,
            start_ns=start_ns,
            started_at=iso_from_ns(start_ns) if started else None,
            custom=self._custom,
        )
        target = self._recording_target or self._record.target
        if isinstance(target, TraceBoundTarget):
            target.bind_call(self._conversation_id, self._record.call_span.get_span_context())
        self._chunks.attach(target, self._conversation_id)
        if self._pending:
            self._record.add(self._pending)
            self._pending = []

    def _end(self, reason: str, now_ns: int) -> Awaitable[None]:
        # Capture rule 18: the send outlives a cancelled frame handler; later calls await it.
        if self._end_task is None:
            self._end_task = asyncio.ensure_future(self._finish(reason, now_ns))
        return asyncio.shield(self._end_task)

    async def _finish(self, reason: str, now_ns: int) -> None:
        with _errors.guard("call end"):
            self._emit(self._capture.flush_all(now_ns))
            await self._open(started=False)
            await self._audio.close(self._conversation_id)
            assert self._record is not None
            attrs: dict[str, AttributeValue] = {
                sc.CALL_ENDED_REASON: reason,
                sc.CALL_ENDED_AT: iso_from_ns(time.time_ns()),
                **self._audio.recording_attributes(),
            }
            if self._capture.first_speaker is not None:
                attrs[sc.CALL_AGENT_SPOKE_FIRST] = self._capture.first_speaker == "assistant"
            if self._record.turns == 0 and _errors.should_log(f"empty:{self._conversation_id}"):
                _errors.logger.warning(
                    "call %s ended with an empty transcript: no TranscriptionFrame or "
                    "TTSTextFrame was seen",
                    self._conversation_id,
                )
            self._record.close(attrs, end_ns=time.time_ns())
            await self._record.flush()
