"""Decoded records into the outbox, on disk before either receiver answers."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from .. import _errors
from ..exporter._engine import Engine
from ..exporter._translate import translate
from ._decode import Chunk, Decoded, decode_logs, decode_traces

T = TypeVar("T")


class Unavailable(Exception):
    """The outbox could not store the request: answer retryable so the Collector keeps it."""


def trace_response(decoded: Decoded) -> ExportTraceServiceResponse:
    if not decoded.rejected:
        return ExportTraceServiceResponse()
    partial = ExportTracePartialSuccess(
        rejected_spans=decoded.rejected_count, error_message=_summary(decoded)
    )
    return ExportTraceServiceResponse(partial_success=partial)


def logs_response(decoded: Decoded) -> ExportLogsServiceResponse:
    if not decoded.rejected:
        return ExportLogsServiceResponse()
    partial = ExportLogsPartialSuccess(
        rejected_log_records=decoded.rejected_count, error_message=_summary(decoded)
    )
    return ExportLogsServiceResponse(partial_success=partial)


def _summary(decoded: Decoded) -> str:
    return "refused: " + ", ".join(sorted(decoded.rejected))


class Ingest:
    """Writes each accepted record to the outbox; raises ``Unavailable`` if any write fails."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._closed = threading.Event()
        # Guards _counts: gRPC worker threads and the HTTP executor call in at once.
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Draining: later requests are answered retryable (the Collector sends them again)."""
        self._closed.set()

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise Unavailable("draining")

    def traces(self, request: ExportTraceServiceRequest) -> Decoded:
        self._check_open()
        decoded = decode_traces(request)
        stored = 0
        for span in decoded.spans:
            try:
                item = translate(span)
            except ValueError:  # pydantic refused a field: that span only
                decoded.rejected["invalid span"] += 1
                continue
            if item is None:
                continue
            self._store(self.engine.put_item, item)
            stored += 1
        self._account(decoded, spans=stored)
        return decoded

    def logs(self, request: ExportLogsServiceRequest) -> Decoded:
        self._check_open()
        decoded = decode_logs(request)
        for chunk in decoded.chunks:
            self._store(self._put_chunk, chunk)
        self._account(decoded, chunks=len(decoded.chunks))
        return decoded

    def _put_chunk(self, c: Chunk) -> None:
        self.engine.put_chunk(
            c.call_id, c.index, c.pcm, sample_rate=c.sample_rate, num_channels=c.num_channels
        )

    def _store(self, write: Callable[[T], None], record: T) -> None:
        try:
            write(record)
        except OSError as exc:  # disk full, read-only: nothing of this request counts as taken
            with self._lock:
                self._counts["unavailable"] += 1
            _errors.count_drop("bridge_outbox_unavailable")
            if _errors.should_log("bridge_outbox_unavailable"):
                _errors.logger.warning(
                    "Roark bridge cannot store into its outbox (%s); answering retryable",
                    exc.strerror or type(exc).__name__,
                )
            raise Unavailable(exc.strerror or "outbox unavailable") from None

    def _account(self, decoded: Decoded, *, spans: int = 0, chunks: int = 0) -> None:
        with self._lock:
            self._counts["spans"] += spans
            self._counts["chunks"] += chunks
            for reason, n in decoded.rejected.items():
                self._counts[f"rejected: {reason}"] += n
        if decoded.rejected:
            _errors.count_drop("bridge_rejected", decoded.rejected_count)
            if _errors.should_log("bridge_rejected"):
                _errors.logger.warning(
                    "Roark bridge refused %d record(s): %s",
                    decoded.rejected_count,
                    ", ".join(sorted(decoded.rejected)),
                )

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
