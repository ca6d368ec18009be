"""The bridge for fleets: OTLP (gRPC and HTTP) from a Collector in, Roark out.

Bots export OTLP to an OpenTelemetry Collector, which routes each trace (load
balancing by trace id, spans and recording-chunk log records alike) to one bridge
replica; the bridge stores what it decodes in the same outbox the in-process
exporter uses, and delivery takes it from there. See docs/OTEL.md.
"""

from __future__ import annotations

from ._auth import ENV_TOKEN, TLSFiles
from ._decode import Chunk, Decoded, decode_logs, decode_traces
from ._server import BridgeConfig, RoarkBridge

__all__ = [
    "ENV_TOKEN",
    "BridgeConfig",
    "Chunk",
    "Decoded",
    "RoarkBridge",
    "TLSFiles",
    "decode_logs",
    "decode_traces",
]
