"""``roark-bridge``: OTLP from a Collector in, Roark out.

    ROARK_API_KEY=... ROARK_BRIDGE_TOKEN=... roark-bridge --host 0.0.0.0

SIGTERM drains: no new requests, those in flight reach the outbox, the process exits;
what is not yet delivered stays in the spool for the next start.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from ..config import resolve_settings
from ..exporter._delivery import DeliveryOptions
from ..exporter._engine import engine_for
from ._auth import ENV_TOKEN, TLSFiles, resolve_token
from ._server import MAX_BODY_BYTES, BridgeConfig, RoarkBridge

SHUTDOWN_DELIVERY_S = 5.0


def _port(value: str) -> int | None:
    return None if value == "off" else int(value)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="roark-bridge",
        description=f"OTLP/gRPC + OTLP/HTTP → Roark. API key from ROARK_API_KEY; bearer token "
        f"from {ENV_TOKEN} or --token-file.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default loopback)")
    parser.add_argument("--grpc-port", type=_port, default=4317, help="port, or 'off'")
    parser.add_argument("--http-port", type=_port, default=4318, help="port, or 'off'")
    parser.add_argument("--spool-dir", default=None, help="outbox directory (ROARK_SPOOL_DIR)")
    parser.add_argument("--token-file", default=None, help="file holding the bearer token")
    parser.add_argument("--tls-cert", type=Path, default=None, help="server certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, default=None, help="its private key (PEM)")
    parser.add_argument(
        "--tls-client-ca",
        type=Path,
        default=None,
        help="CA of the client certificates to require (mTLS)",
    )
    parser.add_argument(
        "--orphan-timeout",
        type=float,
        default=DeliveryOptions().orphan_timeout,
        help="seconds without news before a call with no end is ended 'orphaned'",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=MAX_BODY_BYTES,
        help="largest request, compressed and decompressed",
    )
    return parser.parse_args(argv)


def _tls(args: argparse.Namespace) -> TLSFiles | None:
    if args.tls_cert is None and args.tls_key is None:
        if args.tls_client_ca is not None:
            raise ValueError("bridge --tls-client-ca needs --tls-cert and --tls-key")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise ValueError("bridge --tls-cert and --tls-key go together")
    return TLSFiles(args.tls_cert, args.tls_key, args.tls_client_ca)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        settings = resolve_settings(spool_dir=args.spool_dir)
        if args.orphan_timeout <= 0:
            raise ValueError("bridge --orphan-timeout must be positive")
        config = BridgeConfig(
            host=args.host,
            grpc_port=args.grpc_port,
            http_port=args.http_port,
            token=resolve_token(args.token_file),
            tls=_tls(args),
            max_body_bytes=args.max_body_bytes,
        )
        engine = engine_for(settings, options=DeliveryOptions(orphan_timeout=args.orphan_timeout))
        bridge = RoarkBridge(engine, config).start()
    except (ValueError, OSError) as exc:
        sys.exit(f"roark-bridge: {exc}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sides = []
    if bridge.grpc_port is not None:
        sides.append(f"OTLP/gRPC on {bridge.grpc_endpoint}")
    if bridge.http_port is not None:
        sides.append(f"OTLP/HTTP on {bridge.http_endpoint}")
    auth = "bearer token required" if bridge.auth.required else "no token"
    if config.tls is not None:
        auth += ", mTLS" if config.tls.client_ca_file else ", TLS"
    print(f"roark bridge: {', '.join(sides)} ({auth}) → {settings.base_url}", flush=True)
    stop.wait()
    bridge.stop()
    engine.shutdown(SHUTDOWN_DELIVERY_S)
    print("roark bridge: drained", flush=True)


if __name__ == "__main__":
    main()
