"""One bot host of the fleet test: several simulated calls at once, OTLP only, to a Collector.

    python -m tests.fleet_bot --collector 127.0.0.1:4317 --calls 3 --out bot-1.json

No Roark exporter and no Roark key in this process: spans go through the OTLP trace
exporter, the recording through ``OTLPRecordingTarget`` and the OTLP log exporter. It
writes what its recorders produced (per call: chunk sizes and the PCM's SHA-256), for the
test to compare with Roark's WAV.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
from pathlib import Path

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from pipecat_roark_otel import RoarkObserver
from pipecat_roark_otel.audio import OTLPRecordingTarget
from pipecat_roark_otel.simulation import run_simulated_call


async def _one_call(target: OTLPRecordingTarget, sample_rate: int) -> tuple[str, list[bytes]]:
    observer = RoarkObserver(agent_id="fleet-bot", recording_target=target)
    recorded: list[bytes] = []
    observer.recording.add_listener(lambda pcm, _rate, _channels: recorded.append(pcm))
    await run_simulated_call(observer, audio_out_sample_rate=sample_rate)
    return observer.conversation_id, recorded


async def run(collector: str, calls: int, out: Path) -> None:
    resource = Resource.create({"service.name": f"fleet-bot-{os.getpid()}"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=collector, insecure=True), schedule_delay_millis=200
        )
    )
    trace.set_tracer_provider(tracer_provider)
    logger_provider = LoggerProvider(resource=resource)
    # One chunk (~0.5-1.5 MiB) per request: inside the Collector's 4 MiB gRPC limit.
    logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(
            OTLPLogExporter(endpoint=collector, insecure=True),
            max_export_batch_size=1,
            schedule_delay_millis=200,
        )
    )
    target = OTLPRecordingTarget(logger_provider)
    rates = [16_000, 24_000, 8_000]
    results = await asyncio.gather(
        *(_one_call(target, rates[i % len(rates)]) for i in range(calls))
    )
    assert tracer_provider.force_flush(30_000)
    assert logger_provider.force_flush(30_000)
    tracer_provider.shutdown()
    logger_provider.shutdown()
    report = {
        call_id: {
            "sizes": [len(c) for c in recorded],
            "sha256": hashlib.sha256(b"".join(recorded)).hexdigest(),
        }
        for call_id, recorded in results
    }
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report))
    tmp.replace(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--collector", required=True, help="the Collector's OTLP/gRPC address")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(run(args.collector, args.calls, args.out))


if __name__ == "__main__":
    main()
