"""``roark-devserver`` / ``python -m pipecat_roark_otel.devserver``: Local Roark, foreground."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Sequence
from types import FrameType

from ._local import DEFAULT_API_KEY, LocalRoark

ENV_API_KEY = "ROARK_DEVSERVER_API_KEY"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="roark-devserver", description="Local Roark ingestion server for development."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--data-dir", default=None, help="default: a fresh temp dir")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(ENV_API_KEY) or os.environ.get("ROARK_API_KEY") or DEFAULT_API_KEY,
        help=(
            f"accepted API key (default: ${ENV_API_KEY}, then $ROARK_API_KEY, then "
            f"{DEFAULT_API_KEY}); a flag is visible to other users in the process list, "
            "the environment is not"
        ),
    )
    parser.add_argument("--url-ttl", type=float, default=300.0, help="presigned URL lifetime, s")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    roark = LocalRoark(args.data_dir, args.api_key, args.host, args.port, args.url_ttl)
    with roark:
        print(f"Local Roark listening on {roark.base_url} (data: {roark.data_dir})", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
