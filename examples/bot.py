"""A real voice bot (Deepgram → OpenAI → Cartesia) with Roark capture and OTel tracing.

    pip install -e '.[bot]'
    export ROARK_API_KEY=rk_live_... DEEPGRAM_API_KEY=... OPENAI_API_KEY=... CARTESIA_API_KEY=...
    python examples/bot.py --transport webrtc     # or: --transport daily

The same ``bot(runner_args)`` entry point runs self-hosted and on Pipecat Cloud.
Set ``OTEL_EXPORTER_OTLP_ENDPOINT`` to also send the traces to Jaeger / Honeycomb.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import LLMRunFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.runner.types import RunnerArguments
from pipecat.runner.utils import create_transport
from pipecat.services.cartesia.tts import CartesiaTTSService
from pipecat.services.deepgram.stt import DeepgramSTTService
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.transports.base_transport import BaseTransport, TransportParams

from pipecat_roark_otel import RoarkObserver
from pipecat_roark_otel.exporter import RoarkSpanExporter

SYSTEM_PROMPT = (
    "You are a friendly support agent for Copperline Care. Your output is spoken aloud: "
    "keep answers short, and don't use special characters."
)


def setup_tracing() -> TracerProvider:
    """One provider for the process: Roark always, OTLP when configured."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": os.getenv("OTEL_SERVICE_NAME", "voice-bot")})
    )
    provider.add_span_processor(BatchSpanProcessor(RoarkSpanExporter()))
    if os.getenv("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def build_task(
    transport: BaseTransport, runner_args: Any = None
) -> tuple[PipelineTask, RoarkObserver]:
    """The pipeline, with the observer and its recorder wired in."""
    stt = DeepgramSTTService(api_key=os.environ["DEEPGRAM_API_KEY"])
    llm = OpenAILLMService(api_key=os.environ["OPENAI_API_KEY"])
    tts = CartesiaTTSService(
        api_key=os.environ["CARTESIA_API_KEY"],
        settings=CartesiaTTSService.Settings(
            voice=os.getenv("CARTESIA_VOICE_ID", "71a7ad14-091c-4e8e-a314-022ece01c121")
        ),
    )
    context = LLMContext([{"role": "system", "content": SYSTEM_PROMPT}])
    aggregators = LLMContextAggregatorPair(
        context, user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer())
    )
    roark = RoarkObserver(
        agent_id="copperline-support",
        agent_name="Copperline Support",
        agent_prompt=SYSTEM_PROMPT,
        runner_args=runner_args,
    )
    pipeline = Pipeline(
        [
            transport.input(),
            stt,
            aggregators.user(),
            llm,
            tts,
            transport.output(),
            roark.audio_processor,  # after transport.output(): L = user, R = bot
            aggregators.assistant(),
        ]
    )
    task = PipelineTask(
        pipeline,
        params=PipelineParams(enable_metrics=True),
        observers=[roark],
        enable_tracing=True,
    )

    @transport.event_handler("on_client_connected")
    async def on_client_connected(_transport: Any, _client: Any) -> None:
        context.add_message({"role": "user", "content": "Say hello and offer help."})
        await task.queue_frames([LLMRunFrame()])

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(_transport: Any, _client: Any) -> None:
        # Some transports tear down without an EndFrame: end the call for Roark now.
        await roark.aflush(reason="client-disconnected")
        await task.cancel()

    return task, roark


async def bot(runner_args: RunnerArguments) -> None:
    """Entry point for Pipecat's runner and for Pipecat Cloud."""
    provider = setup_tracing()
    transport = await create_transport(
        runner_args,
        {
            "daily": lambda: _daily_params(),
            "webrtc": lambda: TransportParams(audio_in_enabled=True, audio_out_enabled=True),
        },
    )
    task, _ = build_task(transport, runner_args)
    await PipelineRunner(handle_sigint=runner_args.handle_sigint).run(task)
    provider.force_flush()


def _daily_params() -> TransportParams:
    from pipecat.transports.daily.transport import DailyParams

    return DailyParams(audio_in_enabled=True, audio_out_enabled=True)


if __name__ == "__main__":
    from pipecat.runner.run import main

    main()
