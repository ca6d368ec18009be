"""A real voice bot (Deepgram → OpenAI → Cartesia) with Roark capture and OTel tracing.

    pip install -e '.[bot]'
    export ROARK_API_KEY=rk_live_... DEEPGRAM_API_KEY=... OPENAI_API_KEY=... CARTESIA_API_KEY=...
    python examples/bot.py --transport webrtc     # or: --transport daily / twilio

The same ``bot(runner_args)`` entry point runs self-hosted and on Pipecat Cloud.
Set ``OTEL_EXPORTER_OTLP_ENDPOINT`` to also send the traces to Jaeger / Honeycomb.
``DEEPGRAM_BASE_URL``, ``OPENAI_BASE_URL``, ``CARTESIA_TTS_URL`` and ``TWILIO_API_BASE_URL``
point the services elsewhere (``examples/offline_call.py`` runs this bot fully offline).
"""

from __future__ import annotations

import functools
import os
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import EndWorkerFrame, FunctionCallResultProperties, LLMRunFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.runner.types import RunnerArguments, WebSocketRunnerArguments
from pipecat.runner.utils import create_transport
from pipecat.services.cartesia.tts import CartesiaTTSService
from pipecat.services.deepgram.stt import DeepgramSTTService
from pipecat.services.llm_service import FunctionCallParams
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pipecat.workers.runner import WorkerRunner

from pipecat_roark_otel import RoarkObserver
from pipecat_roark_otel.exporter import RoarkSpanExporter

SYSTEM_PROMPT = (
    "You are a friendly support agent for Copperline Care. Your output is spoken aloud: "
    "keep answers short, and don't use special characters. Look orders up with lookup_order; "
    "after saying goodbye, call end_call."
)
TOOLS = ToolsSchema(
    standard_tools=[
        FunctionSchema(
            name="lookup_order",
            description="Look up an order's delivery status.",
            properties={"order_id": {"type": "string", "description": "e.g. A-1042"}},
            required=["order_id"],
        ),
        FunctionSchema(
            name="end_call", description="Hang up after saying goodbye.", properties={}, required=[]
        ),
    ]
)


async def lookup_order(params: FunctionCallParams) -> None:
    # Your order system goes here.
    order_id = params.arguments.get("order_id", "")
    await params.result_callback({"order_id": order_id, "status": "shipped", "eta": "tomorrow"})


async def end_call(params: FunctionCallParams) -> None:
    # The goodbye is already queued ahead of this: the task ends once it has played.
    await params.result_callback(
        {"ended": True}, properties=FunctionCallResultProperties(run_llm=False)
    )
    await params.llm.push_frame(EndWorkerFrame())


@functools.cache
def setup_tracing() -> TracerProvider:
    """One provider for the process (not per call): Roark always, OTLP when configured.

    A host that configured OpenTelemetry itself keeps its provider (add the
    RoarkSpanExporter to it there).
    """
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
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
    transport: BaseTransport, runner_args: Any = None, *, sample_rate: int | None = None
) -> tuple[PipelineWorker, RoarkObserver]:
    """The pipeline, with the observer wired in (it records the call too).

    ``sample_rate`` pins the pipeline's audio rate (8000 on a phone line); by default
    Pipecat picks its own.
    """
    stt = DeepgramSTTService(
        api_key=os.environ["DEEPGRAM_API_KEY"], base_url=os.getenv("DEEPGRAM_BASE_URL", "")
    )
    llm = OpenAILLMService(
        api_key=os.environ["OPENAI_API_KEY"],
        base_url=os.getenv("OPENAI_BASE_URL"),
        settings=OpenAILLMService.Settings(system_instruction=SYSTEM_PROMPT),
    )
    llm.register_function("lookup_order", lookup_order)
    llm.register_function("end_call", end_call)
    tts = CartesiaTTSService(
        api_key=os.environ["CARTESIA_API_KEY"],
        url=os.getenv("CARTESIA_TTS_URL", "wss://api.cartesia.ai/tts/websocket"),
        settings=CartesiaTTSService.Settings(
            voice=os.getenv("CARTESIA_VOICE_ID", "71a7ad14-091c-4e8e-a314-022ece01c121")
        ),
    )
    context = LLMContext(tools=TOOLS)
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
            transport.output(),  # the observer records what it plays: L = user, R = bot
            aggregators.assistant(),
        ]
    )
    rates = {"audio_in_sample_rate": sample_rate, "audio_out_sample_rate": sample_rate}
    rates = {name: rate for name, rate in rates.items() if rate}
    task = PipelineWorker(
        pipeline,
        params=PipelineParams(enable_metrics=True, enable_usage_metrics=True, **rates),
        observers=[roark],
        enable_tracing=True,
        idle_timeout_secs=getattr(runner_args, "pipeline_idle_timeout_secs", 300),
    )

    @transport.event_handler("on_client_connected")
    async def on_client_connected(_transport: Any, _client: Any) -> None:
        context.add_message({"role": "user", "content": "Say hello and offer help."})
        await task.queue_frames([LLMRunFrame()])

    return task, roark


def end_call_on_disconnect(
    transport: BaseTransport, task: PipelineWorker, roark: RoarkObserver
) -> None:
    """The caller hanging up ends the call (the README's disconnect wiring)."""

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(_transport: Any, _client: Any) -> None:
        # Some transports tear down without an EndFrame: end the call for Roark now.
        await roark.aflush(reason="client-disconnected")
        await task.cancel()


async def bot(runner_args: RunnerArguments) -> None:
    """Entry point for Pipecat's runner and for Pipecat Cloud."""
    provider = setup_tracing()
    sample_rate = None  # Pipecat's defaults
    if isinstance(runner_args, WebSocketRunnerArguments):
        transport, sample_rate = await twilio_transport(runner_args), 8000
    else:
        transport = await create_transport(
            runner_args,
            {
                "daily": lambda: _daily_params(),
                "webrtc": lambda: TransportParams(audio_in_enabled=True, audio_out_enabled=True),
            },
        )
    task, roark = build_task(transport, runner_args, sample_rate=sample_rate)
    end_call_on_disconnect(transport, task, roark)
    runner = WorkerRunner(handle_sigint=runner_args.handle_sigint)
    await runner.add_workers(task)
    await runner.run()
    provider.force_flush()


def _daily_params() -> TransportParams:
    from pipecat.transports.daily.transport import DailyParams

    return DailyParams(audio_in_enabled=True, audio_out_enabled=True)


async def twilio_transport(runner_args: WebSocketRunnerArguments) -> BaseTransport:
    """A Twilio media stream; built here so the hang-up can go to ``TWILIO_API_BASE_URL``."""
    from pipecat.runner.utils import parse_telephony_websocket
    from pipecat.serializers.twilio import TwilioFrameSerializer
    from pipecat.transports.websocket.fastapi import (
        FastAPIWebsocketParams,
        FastAPIWebsocketTransport,
    )

    _, call = await parse_telephony_websocket(runner_args.websocket)
    serializer = TwilioFrameSerializer(
        stream_sid=call["stream_id"],
        call_sid=call["call_id"],
        account_sid=os.getenv("TWILIO_ACCOUNT_SID", ""),
        auth_token=os.getenv("TWILIO_AUTH_TOKEN", ""),
        base_url=os.getenv("TWILIO_API_BASE_URL"),
    )
    params = FastAPIWebsocketParams(
        audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False, serializer=serializer
    )
    return FastAPIWebsocketTransport(websocket=runner_args.websocket, params=params)


if __name__ == "__main__":
    from pipecat.runner.run import main

    main()
