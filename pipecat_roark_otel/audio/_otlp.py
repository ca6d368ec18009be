"""Fleet mode: recording chunks as OTLP log records, so no Roark exporter runs on the bot host.

Each chunk is one log record in the call span's trace (trace and span id of ``roark.call``):
the Collector's load-balancing exporter routes it by trace id to the bridge that gets the
call's spans, and that bridge's outbox orders call-started -> chunks -> call-ended.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Final

from opentelemetry._logs import LoggerProvider, LogRecord, get_logger_provider
from opentelemetry.trace import SpanContext

from .. import _errors
from .. import semconv as sc
from .._version import __version__

# Calls whose trace context is remembered; far more than one process runs at once.
_MAX_CALLS: Final = 4096


class OTLPRecordingTarget:
    """Hands each chunk to the logs SDK: ``RoarkObserver(recording_target=...)``.

    Give it a ``LoggerProvider`` with a ``BatchLogRecordProcessor`` and an OTLP log exporter
    (the global one when omitted): ``emit`` then only queues, so the audio path never waits.
    """

    def __init__(self, logger_provider: LoggerProvider | None = None) -> None:
        provider = logger_provider or get_logger_provider()
        self._logger = provider.get_logger(sc.INSTRUMENTATION_SCOPE, __version__)
        # Guards _contexts: bound on the event loop, read from the audio tasks.
        self._lock = threading.Lock()
        self._contexts: OrderedDict[str, SpanContext] = OrderedDict()

    def bind_call(self, call_id: str, span_context: SpanContext) -> None:
        """The call span's context: every chunk of the call travels in its trace."""
        with self._lock:
            self._contexts[call_id] = span_context
            self._contexts.move_to_end(call_id)
            while len(self._contexts) > _MAX_CALLS:
                self._contexts.popitem(last=False)

    def submit_chunk(
        self,
        call_id: str,
        index: int,
        pcm: bytes,
        *,
        sample_rate: int | None = None,
        num_channels: int | None = None,
    ) -> bool:
        with self._lock:
            context = self._contexts.get(call_id)
        if context is None or sample_rate is None or num_channels is None:
            _errors.count_drop("audio_no_trace_context")
            return False
        self._logger.emit(
            LogRecord(
                timestamp=time.time_ns(),
                trace_id=context.trace_id,
                span_id=context.span_id,
                trace_flags=context.trace_flags,
                body=pcm,
                attributes={
                    sc.CONVERSATION_ID: call_id,
                    sc.RECORDING_CHUNK_INDEX: index,
                    sc.RECORDING_SAMPLE_RATE: sample_rate,
                    sc.RECORDING_CHANNELS: num_channels,
                },
            )
        )
        return True
