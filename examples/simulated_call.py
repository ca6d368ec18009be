"""A scripted call through a real Pipecat PipelineTask, delivered to Roark and traced.

    python examples/simulated_call.py            # embedded local Roark, nothing to configure
    ROARK_BASE_URL=... ROARK_API_KEY=... python examples/simulated_call.py   # that Roark
    ROARK_API_KEY=rk_live_... python examples/simulated_call.py              # real Roark
    OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 python examples/simulated_call.py

No API keys for STT/LLM/TTS, no network, no models: scripted services emit the
frames real ones do, and the output transport plays the audio in real time
(``--speed`` to change that).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from contextlib import ExitStack, suppress
from pathlib import Path
from urllib.parse import quote

import httpx
from loguru import logger as pipecat_logger
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from pipecat_roark_otel import RoarkObserver
from pipecat_roark_otel.config import DEFAULT_BASE_URL, ENV_API_KEY, ENV_BASE_URL
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter
from pipecat_roark_otel.simulation import DEFAULT_SCRIPT, Script, run_simulated_call

JAEGER_URL = os.environ.get("ROARK_JAEGER_URL", "http://localhost:16686")


def _otlp_processor() -> BatchSpanProcessor | None:
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") and not os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # Reads the standard OTEL_EXPORTER_OTLP_* variables itself.
    return BatchSpanProcessor(OTLPSpanExporter())


def _link_trace(base_url: str, api_key: str, call_id: str, trace_id: str) -> None:
    """Tell a local Roark the call's trace, so its page links to Jaeger."""
    with suppress(httpx.HTTPError):
        httpx.post(
            f"{base_url}/_dev/calls/{quote(call_id, safe='')}/trace",
            json={"traceId": trace_id, "jaegerUrl": JAEGER_URL},
            headers={"x-roark-api-key": api_key, "authorization": f"Bearer {api_key}"},
            timeout=5,
        )


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, default=1.0, help="playback speed (1 = real time)")
    parser.add_argument("--local", action="store_true", help="always use the embedded Roark")
    parser.add_argument("--data-dir", default=".roark-dev", help="embedded Roark and spool dir")
    parser.add_argument("--verbose", action="store_true", help="show Pipecat's logs")
    args = parser.parse_args(argv)
    if not args.verbose:
        pipecat_logger.remove()
    logging.basicConfig(level=logging.WARNING)

    with ExitStack() as stack:
        data_dir = Path(args.data_dir)
        local: LocalRoark | None = None
        if args.local or not (os.environ.get(ENV_BASE_URL) or os.environ.get(ENV_API_KEY)):
            local = stack.enter_context(LocalRoark(data_dir=data_dir / "roark"))
            base_url, api_key = local.base_url, local.api_key
        else:
            base_url = os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
            api_key = os.environ.get(ENV_API_KEY, "")

        service = os.environ.get("OTEL_SERVICE_NAME", "simulated-call")
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        exporter = RoarkSpanExporter(
            api_key=api_key, base_url=base_url, spool_dir=data_dir / "spool"
        )
        provider.add_span_processor(BatchSpanProcessor(exporter))
        if (otlp := _otlp_processor()) is not None:
            provider.add_span_processor(otlp)
        trace.set_tracer_provider(provider)

        observer = RoarkObserver(
            agent_id="simulated-support-bot",
            agent_name="Simulated Support Bot",
            agent_prompt="You are a friendly support agent for Copperline Care.",
        )
        script = Script(
            DEFAULT_SCRIPT.exchanges, greeting=DEFAULT_SCRIPT.greeting, speed=args.speed
        )
        await run_simulated_call(observer, script=script, enable_tracing=True)

        provider.force_flush()
        delivered = exporter.force_flush(30_000)
        trace_id = observer.trace_id or ""
        print(f"call id:  {observer.conversation_id}")
        print(f"trace id: {trace_id}")
        print(f"roark:    {base_url}  ({'delivered' if delivered else 'still queued on disk'})")
        if base_url != DEFAULT_BASE_URL:
            _link_trace(base_url, api_key, observer.conversation_id, trace_id)
        if local is None:
            provider.shutdown()
            return 0 if delivered else 1

        call = local.wait_for_call_ended(observer.conversation_id, timeout=30)
        ended = call["ended"]
        print("transcript:")
        for turn in ended.get("transcript", []):
            print(f"  {turn['role']:>9}: {turn['content']}")
        print("tool calls:")
        for record in ended.get("toolCalls", []):
            detail = record.get("arguments") if record["kind"] == "tool_call" else record["content"]
            print(f"  {record['kind']:>11}: {record.get('name', record['toolCallId'])} {detail}")
        print(f"wav:      {call.get('wav_path')}")
        page = f"/calls/{quote(observer.conversation_id, safe='')}"
        print(f"page:     {base_url}{page}")
        # The embedded server stops with this script; its data dir outlives it.
        print("serve it again after this script exits:")
        print(f"  python -m pipecat_roark_otel.devserver --data-dir {local.data_dir} --port 8787")
        print(f"  then open http://127.0.0.1:8787{page}")
        print(json.dumps({"callEndedReason": ended["callEndedReason"]}))
        provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
