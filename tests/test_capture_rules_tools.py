"""Rule 10 (tool calls), docs/CAPTURE_RULES.md: each test fails if its rule breaks."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

from pipecat.frames.frames import (
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
)

from pipecat_roark_otel import RoarkObserver
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter
from pipecat_roark_otel.simulation import (
    Exchange,
    Script,
    SimulatedCall,
    Tool,
)

from .support.capture import (
    E2E,
    Hops,
    hand_call,
    pipeline_task,
    push,
    read_call,
    run,
    started_observer,
)


class _Unserialisable:
    def __repr__(self) -> str:
        return "Unserialisable()"


async def test_rule_10_tool_calls_and_results_are_stringified_per_contract(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """10. InProgress -> tool_call, Result -> tool_result, by toolCallId; values never crash."""
    observer = await started_observer()
    h = Hops()
    cases: list[tuple[str, object, object]] = [
        ("c1", {"order_id": "A-1042", "items": [1, 2]}, {"status": "shipped"}),
        ("c2", '{"raw": "json string"}', ["a", "b"]),
        ("c3", None, None),
        ("c4", {"when": _Unserialisable()}, 42),
        ("c5", {(1, 2): "tuple key"}, {(1, 2): _Unserialisable()}),
        ("c6", [_Unserialisable()], _Unserialisable()),
    ]
    for call_id, arguments, result in cases:
        kwargs = {"function_name": f"fn_{call_id}", "tool_call_id": call_id, "arguments": arguments}
        await push(observer, FunctionCallInProgressFrame(**kwargs), h.llm, h.tts)
        await push(observer, FunctionCallResultFrame(**kwargs, result=result), h.llm, h.tts)
    ended = await hand_call(observer, exporter, roark)
    records = ended["toolCalls"]
    calls = [r for r in records if r["kind"] == "tool_call"]
    results = {r["toolCallId"]: r["content"] for r in records if r["kind"] == "tool_result"}
    assert [r["kind"] for r in records] == ["tool_call", "tool_result"] * len(cases)
    assert [(c["toolCallId"], c["name"]) for c in calls] == [
        (call_id, f"fn_{call_id}") for call_id, _, _ in cases
    ]
    arguments = {c["toolCallId"]: c["arguments"] for c in calls}
    assert arguments["c1"] == '{"order_id":"A-1042","items":[1,2]}'
    assert arguments["c2"] == '{"raw": "json string"}'
    assert arguments["c3"] == "{}"
    assert arguments["c4"] == '{"when":"Unserialisable()"}'
    assert arguments["c5"] == '{"[1,2]":"tuple key"}'
    assert arguments["c6"] == '["Unserialisable()"]'
    assert results == {
        "c1": '{"status":"shipped"}',
        "c2": '["a","b"]',
        "c3": "",
        "c4": "42",
        "c5": '{"[1,2]":"Unserialisable()"}',
        "c6": "Unserialisable()",
    }


ODD_TOOLS = Script(
    exchanges=(
        Exchange(
            user="When can you come",
            bot="Tuesday works.",
            tool=Tool(
                "find_slots",
                {"days": ("mon", "tue"), "after": datetime(2026, 3, 4, 9, 30, tzinfo=UTC)},
                (1, "a"),
                "odd_1",
            ),
        ),
        Exchange(
            user="How much",
            bot="Twelve fifty.",
            tool=Tool(
                "quote",
                ("A-1", 2),
                {
                    "total": Decimal("12.50"),
                    "ref": UUID(int=7),
                    "tags": {"b", "a"},
                    "who": _Unserialisable(),
                },
                "odd_2",
            ),
        ),
    ),
    speed=16.0,
)


@E2E
async def test_rule_10_tuples_sets_and_odd_leaves_reach_roark_as_json(
    exporter: RoarkSpanExporter, roark: LocalRoark
) -> None:
    """10. Containers go as JSON of the same shape, never as a Python repr."""
    observer = RoarkObserver(agent_id="capture-rules")
    await run(pipeline_task(observer, *SimulatedCall(ODD_TOOLS).processors(None)))
    ended = (await read_call(exporter, roark, observer.conversation_id))["ended"]
    wire = {(r["kind"], r["toolCallId"]): r for r in ended["toolCalls"]}
    assert wire["tool_call", "odd_1"]["arguments"] == (
        '{"days":["mon","tue"],"after":"2026-03-04T09:30:00+00:00"}'
    )
    assert wire["tool_result", "odd_1"]["content"] == '[1,"a"]'
    assert wire["tool_call", "odd_2"]["arguments"] == '["A-1",2]'
    assert json.loads(wire["tool_result", "odd_2"]["content"]) == {
        "total": "12.50",
        "ref": str(UUID(int=7)),
        "tags": ["a", "b"],
        "who": "Unserialisable()",
    }
