"""OTLP/HTTP in, Roark out: the bridge for fleets of bot hosts.

Bots export OTLP to an OpenTelemetry Collector, which routes each trace (load
balancing by trace id) to a bridge; the bridge runs the same translation and
outbox as the in-process exporter. Orphaned calls (a bot that died mid-call)
are finalised by the delivery engine's orphan timeout.

    ROARK_API_KEY=... python -m pipecat_roark_otel.bridge --port 4318
"""

from __future__ import annotations

import argparse
import gzip
import signal
import threading
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, TraceFlags
from opentelemetry.util.types import AttributeValue

from . import _errors
from . import semconv as sc
from .exporter import RoarkSpanExporter

MAX_BODY_BYTES = 32 * 1024 * 1024


def _value(any_value: Any) -> AttributeValue | None:
    # Our spans carry scalars only; anything else is not ours to read.
    kind = any_value.WhichOneof("value")
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        value: AttributeValue = getattr(any_value, kind)
        return value
    return None


def _attributes(kvs: Iterable[Any]) -> dict[str, AttributeValue]:
    out: dict[str, AttributeValue] = {}
    for kv in kvs:
        value = _value(kv.value)
        if value is not None:
            out[kv.key] = value
    return out


def spans_from_otlp(body: bytes) -> list[ReadableSpan]:
    """Our spans in an ``ExportTraceServiceRequest``, as the SDK would hand them to an exporter."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans: list[ReadableSpan] = []
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            if scope_spans.scope.name != sc.INSTRUMENTATION_SCOPE:
                continue
            scope = InstrumentationScope(scope_spans.scope.name, scope_spans.scope.version)
            for span in scope_spans.spans:
                context = SpanContext(
                    int.from_bytes(span.trace_id, "big"),
                    int.from_bytes(span.span_id, "big"),
                    is_remote=True,
                    trace_flags=TraceFlags(TraceFlags.SAMPLED),
                )
                spans.append(
                    ReadableSpan(
                        name=span.name,
                        context=context,
                        attributes=_attributes(span.attributes),
                        events=[
                            Event(e.name, _attributes(e.attributes), e.time_unix_nano)
                            for e in span.events
                        ],
                        start_time=span.start_time_unix_nano,
                        end_time=span.end_time_unix_nano,
                        instrumentation_scope=scope,
                    )
                )
    return spans


class _Handler(BaseHTTPRequestHandler):
    server: OTLPBridge

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/traces":
            self._reply(404, b"not found")
            return
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY_BYTES:
            self._reply(413, b"body too large")
            return
        body = self.rfile.read(length)
        try:
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            spans = spans_from_otlp(body)
        except Exception:
            _errors.count_drop("bridge_bad_request")
            self._reply(400, b"not an OTLP/HTTP protobuf ExportTraceServiceRequest")
            return
        if spans:
            self.server.exporter.export(spans)
        # An empty ExportTraceServiceResponse.
        self._reply(200, b"", content_type="application/x-protobuf")

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


class OTLPBridge(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver that feeds our spans to a RoarkSpanExporter."""

    daemon_threads = True

    def __init__(
        self, exporter: RoarkSpanExporter, host: str = "127.0.0.1", port: int = 4318
    ) -> None:
        super().__init__((host, port), _Handler)
        self.exporter = exporter
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/v1/traces"

    def start(self) -> OTLPBridge:
        self._thread = threading.Thread(
            target=self.serve_forever, name="roark-otlp-bridge", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OTLP/HTTP → Roark bridge")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=4318)
    parser.add_argument("--spool-dir", default=None)
    args = parser.parse_args(argv)
    exporter = RoarkSpanExporter(spool_dir=args.spool_dir)
    bridge = OTLPBridge(exporter, args.host, args.port)
    print(
        f"roark bridge: OTLP/HTTP on {bridge.endpoint} → {exporter.settings.base_url}", flush=True
    )
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=bridge.shutdown).start())
    try:
        bridge.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        bridge.server_close()
        exporter.shutdown()


if __name__ == "__main__":
    main()
