"""Span, event and attribute names of the call record, shared by writer and reader.

OTel GenAI conventions are used where they fit (conversation id, tool calls);
everything else is ours under ``roark.*``. The README table is checked against
this module by ``tests/test_semconv.py``.
"""

from __future__ import annotations

from typing import Final

INSTRUMENTATION_SCOPE: Final = "pipecat_roark_otel"

# Spans. The start span ends at once so call-started leaves while the call runs;
# segments end as they fill; the call span ends with the call.
SPAN_CALL: Final = "roark.call"
SPAN_CALL_START: Final = "roark.call.start"
SPAN_CALL_SEGMENT: Final = "roark.call.segment"
# One child of the call span per executed tool call, named ``execute_tool {tool name}``
# (OTel GenAI conventions); for trace backends only, Roark's exporter skips them.
SPAN_EXECUTE_TOOL: Final = "execute_tool"

# Identity (on every span of ours, as on Pipecat's).
CONVERSATION_ID: Final = "conversation.id"
GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"

# Call attributes.
AGENT_ID: Final = "roark.agent.id"
AGENT_NAME: Final = "roark.agent.name"
AGENT_PROMPT: Final = "roark.agent.prompt"
CALL_STARTED_AT: Final = "roark.call.started_at"
CALL_ENDED_AT: Final = "roark.call.ended_at"
CALL_ENDED_REASON: Final = "roark.call.ended_reason"
CALL_AGENT_SPOKE_FIRST: Final = "roark.call.agent_spoke_first"
CALL_SEGMENT_COUNT: Final = "roark.call.segment_count"
CALL_TURN_COUNT: Final = "roark.call.turn_count"
CALL_TOOL_EVENT_COUNT: Final = "roark.call.tool_event_count"
SEGMENT_INDEX: Final = "roark.segment.index"

# Recording facts (on the call span).
RECORDING_SAMPLE_RATE: Final = "roark.recording.sample_rate"
RECORDING_CHANNELS: Final = "roark.recording.channels"
RECORDING_CHUNKS: Final = "roark.recording.chunks"
RECORDING_BYTES: Final = "roark.recording.bytes"
RECORDING_UPLOAD_FAILURES: Final = "roark.recording.upload_failures"

# Fleet path: one OTLP log record per audio chunk (body: the PCM bytes), in the
# call span's trace so the Collector routes it to the same bridge as the spans.
RECORDING_CHUNK_INDEX: Final = "roark.recording.chunk.index"

# Events.
EVENT_CALL_STARTED: Final = "roark.call.started"
EVENT_CALL_ENDED: Final = "roark.call.ended"
EVENT_TURN: Final = "roark.turn"
EVENT_TOOL_CALL: Final = "gen_ai.tool.call"
EVENT_TOOL_RESULT: Final = "gen_ai.tool.result"

# Event attributes: every event carries its order within the call.
EVENT_SEQ: Final = "roark.seq"
TIMESTAMP: Final = "roark.timestamp"
AUDIO_OFFSET_MS: Final = "roark.audio_offset_ms"

TURN_ROLE: Final = "roark.turn.role"
TURN_CONTENT: Final = "roark.turn.content"
TURN_END_TIMESTAMP: Final = "roark.turn.end_timestamp"
TURN_END_AUDIO_OFFSET_MS: Final = "roark.turn.end_audio_offset_ms"
TURN_USER_ID: Final = "roark.turn.user_id"
TURN_LANGUAGE: Final = "roark.turn.language"
TURN_INTERRUPTED: Final = "roark.turn.interrupted"
TURN_LATENCY_MS: Final = "roark.turn.latency_ms"
# A reply's latency breakdown and token usage, from Pipecat's metrics frames.
TURN_STT_TTFB_MS: Final = "roark.turn.stt.ttfb_ms"
TURN_LLM_TTFB_MS: Final = "roark.turn.llm.ttfb_ms"
TURN_TTS_TTFB_MS: Final = "roark.turn.tts.ttfb_ms"
USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"

TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
TOOL_NAME: Final = "gen_ai.tool.name"
TOOL_ARGUMENTS: Final = "gen_ai.tool.call.arguments"
TOOL_RESULT: Final = "gen_ai.tool.call.result"
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
TOOL_TYPE: Final = "gen_ai.tool.type"
ERROR_TYPE: Final = "error.type"

# Attributes holding personal data (transcript text, tool payloads, prompts):
# what ``ContentFilteringSpanExporter`` strips before a third-party backend.
CONTENT_ATTRIBUTES: Final = frozenset(
    {TURN_CONTENT, TOOL_ARGUMENTS, TOOL_RESULT, AGENT_PROMPT, TURN_USER_ID}
)

# Instrumentation-scope attribute, true on a call's copy written only for the user's
# trace backend because Roark's copy took its own path: RoarkSpanExporter skips it.
SCOPE_BACKEND_COPY: Final = "roark.backend_copy"

SPAN_NAMES: Final = frozenset({SPAN_CALL, SPAN_CALL_START, SPAN_CALL_SEGMENT})

# What custom attributes (``RoarkObserver(attributes=...)``) may not set: every name
# above, Pipecat's ``conversation.type``, and anything under ``roark.``.
RESERVED_ATTRIBUTES: Final = frozenset(
    {
        value
        for key, value in dict(globals()).items()
        if key.isupper() and isinstance(value, str) and key != "INSTRUMENTATION_SCOPE"
    }
    | {"conversation.type"}
)
RESERVED_PREFIXES: Final = ("roark.",)


def part_key(key: str, index: int) -> str:
    """Where part ``index`` (from 1) of a string longer than the SDK's value limit goes."""
    return f"{key}.{index}"


def is_part_of(key: str, names: frozenset[str]) -> bool:
    """Whether ``key`` is a continuation part of one of ``names``."""
    base, _, index = key.rpartition(".")
    return index.isdigit() and base in names


# Delivery metrics (``RoarkSpanExporter.stats()`` as OpenTelemetry instruments).
METRIC_DELIVERED: Final = "roark.outbox.delivered"
METRIC_RETRIED: Final = "roark.outbox.retried"
METRIC_DEAD_LETTERED: Final = "roark.outbox.dead_lettered"
METRIC_LOST: Final = "roark.outbox.lost"
METRIC_DEPTH: Final = "roark.outbox.depth"
METRIC_OLDEST_AGE: Final = "roark.outbox.oldest_age"
LOST_REASON: Final = "reason"
