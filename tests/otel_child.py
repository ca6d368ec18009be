"""One simulated call in a fresh process, with tracing set up the way a user would.

    python tests/otel_child.py setup_tracing   # Pipecat's setup_tracing(exporter=...)
    python tests/otel_child.py autoconfigure   # the SDK's auto-configuration (OTEL_TRACES_EXPORTER)

Configuration comes from the environment only (ROARK_*, OTEL_*). Prints one JSON
line: the call id and trace id. Run by ``tests/test_otel_paths.py``.
"""

from __future__ import annotations

import asyncio
import json
import sys

from loguru import logger as pipecat_logger
from opentelemetry import trace


def _setup_tracing() -> None:
    from pipecat.utils.tracing.setup import setup_tracing

    from pipecat_roark_otel.exporter import RoarkSpanExporter

    assert setup_tracing("setup-tracing-bot", exporter=RoarkSpanExporter())


def _autoconfigure() -> None:
    # What `opentelemetry-instrument` runs at start-up: opentelemetry-distro's
    # OpenTelemetryConfigurator is this class, unchanged.
    from opentelemetry.sdk._configuration import _OTelSDKConfigurator

    _OTelSDKConfigurator().configure()


async def _call() -> dict[str, str | None]:
    from pipecat_roark_otel import RoarkObserver
    from pipecat_roark_otel.simulation import run_simulated_call

    observer = RoarkObserver(agent_id="child-bot")
    await run_simulated_call(observer)
    return {"conversation_id": observer.conversation_id, "trace_id": observer.trace_id}


def main(mode: str) -> int:
    pipecat_logger.remove()
    {"setup_tracing": _setup_tracing, "autoconfigure": _autoconfigure}[mode]()
    provider = trace.get_tracer_provider()
    result = asyncio.run(_call())
    result["provider"] = type(provider).__name__
    # What a process does at exit (the SDK also registers this with atexit):
    # flush the batch processors, let the exporters deliver and stop.
    provider.shutdown()  # type: ignore[attr-defined]
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
