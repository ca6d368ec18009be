"""OTLP/gRPC, what the Collector's load-balancing exporter speaks: traces and logs services."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from ._auth import BearerAuth, TLSFiles
from ._ingest import Ingest, Unavailable, logs_response, trace_response

WORKERS: Final = 8
# Beyond this many RPCs in flight, callers get RESOURCE_EXHAUSTED rather than queue memory.
MAX_CONCURRENT_RPCS: Final = 64


class _Auth(grpc.ServerInterceptor):
    """Refuses on the metadata alone, before the request body is parsed."""

    def __init__(self, auth: BearerAuth) -> None:
        self._auth = auth

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        metadata = dict(handler_call_details.invocation_metadata or ())
        header = metadata.get("authorization")
        if self._auth.allows(header if isinstance(header, str) else None):
            return continuation(handler_call_details)
        return _REFUSE


def _refuse(_request: bytes, context: grpc.ServicerContext) -> None:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")


_REFUSE: Final[grpc.RpcMethodHandler[bytes, None]] = grpc.unary_unary_rpc_method_handler(_refuse)


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, ingest: Ingest) -> None:
        self._ingest = ingest

    def Export(
        self, request: ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> ExportTraceServiceResponse:
        try:
            return trace_response(self._ingest.traces(request))
        except Unavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"not stored: {exc}")


class _Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, ingest: Ingest) -> None:
        self._ingest = ingest

    def Export(
        self, request: ExportLogsServiceRequest, context: grpc.ServicerContext
    ) -> ExportLogsServiceResponse:
        try:
            return logs_response(self._ingest.logs(request))
        except Unavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"not stored: {exc}")


def make_server(
    ingest: Ingest,
    auth: BearerAuth,
    *,
    host: str,
    port: int,
    max_message_bytes: int,
    tls: TLSFiles | None = None,
) -> tuple[grpc.Server, int]:
    """A bound, not yet started server and its port. gRPC checks the size after decompression."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="roark-bridge-grpc"),
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ],
        interceptors=[_Auth(auth)],
        maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
    )
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(ingest), server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Logs(ingest), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        key, cert, ca = tls.read()
        credentials = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise OSError(f"bridge could not listen for OTLP/gRPC on {host}:{port}")
    return server, bound
