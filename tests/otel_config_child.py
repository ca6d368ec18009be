"""One call in a fresh process whose global provider's sampler judges Pipecat's spans.

    python tests/otel_config_child.py env                      # TracerProvider() from OTEL_*
    python tests/otel_config_child.py drop-conversation-code   # ParentBased, root drops it

The provider carries an in-memory "trace backend" and ``RoarkSpanExporter()`` (ROARK_*
env), set as the global provider as docs/OTEL.md shows. Prints one JSON line: the call
and trace ids, the recorded PCM, and what the backend received. Run by
``tests/test_otel_config.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from loguru import logger as pipecat_logger
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from pipecat_roark_otel.simulation import DEFAULT_SCRIPT, Script, Tool

# The call both sides of tests/test_otel_config.py run: every identifier well past a
# 16-character value limit.
AGENT_ID = "support-bot-v3-eu-west-production"
TOOL_CALL_ID = "call_5f1d8c2a9b7e4f63a0d2c8b1e9f7a6d4"
_TOOL = Tool("lookup_order", {"order_id": "A-1042"}, {"status": "shipped"}, TOOL_CALL_ID)
_first, *_rest = DEFAULT_SCRIPT.exchanges
SCRIPT: Script = dataclasses.replace(
    DEFAULT_SCRIPT, exchanges=(dataclasses.replace(_first, tool=_TOOL), *_rest), speed=12.0
)


class DropConversation(Sampler):
    """A root sampler that keeps every trace but Pipecat's conversations."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if name == "conversation":
            return SamplingResult(Decision.DROP)
        return ALWAYS_ON.should_sample(parent_context, trace_id, name, kind, attributes, links)

    def get_description(self) -> str:
        return "DropConversation"


async def _call() -> dict[str, Any]:
    from pipecat_roark_otel import RoarkObserver
    from pipecat_roark_otel.simulation import run_simulated_call

    observer = RoarkObserver(
        agent_id=AGENT_ID,
        agent_name="Support Bot",
        agent_prompt="Be kind.",
        conversation_id="parent-based-" + "0123456789abcdef" * 2,
    )
    recorded: list[bytes] = []

    observer.recording.add_listener(lambda audio, _sr, _ch: recorded.append(bytes(audio)))
    await run_simulated_call(observer, script=SCRIPT)
    return {
        "conversation_id": observer.conversation_id,
        "trace_id": observer.trace_id,
        "recorded": b"".join(recorded).hex(),
    }


def main(mode: str) -> int:
    from pipecat_roark_otel.exporter import RoarkSpanExporter

    pipecat_logger.remove()
    if mode == "drop-conversation-code":
        provider = TracerProvider(sampler=ParentBased(root=DropConversation()))
    else:
        provider = TracerProvider()
    backend = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(backend))
    provider.add_span_processor(BatchSpanProcessor(RoarkSpanExporter()))
    trace.set_tracer_provider(provider)
    result = asyncio.run(_call())
    provider.shutdown()  # flush, then the exporter delivers what it holds
    spans = backend.get_finished_spans()
    result["backend"] = [
        {
            "name": s.name,
            "scope": s.instrumentation_scope.name if s.instrumentation_scope else None,
            "backend_copy": bool(
                s.instrumentation_scope and (s.instrumentation_scope.attributes or {})
            ),
            "trace_id": format(s.context.trace_id, "032x"),
            "span_id": s.context.span_id,
            "parent": s.parent.span_id if s.parent else None,
        }
        for s in spans
    ]
    # Sampled means the backend took it: a dropped conversation never reaches it.
    result["conversation_sampled"] = any(s.name == "conversation" for s in spans)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
