"""The user's own attributes on the call: at construction, and while the call runs."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pipecat.frames.frames import Frame, TranscriptionFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from pipecat_roark_otel import RoarkObserver, _errors
from pipecat_roark_otel import semconv as sc
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter
from pipecat_roark_otel.simulation import DEFAULT_SCRIPT, SimulatedCall

from .conftest import Otel
from .support.capture import run


@pytest.mark.parametrize(
    ("attributes", "says"),
    [
        ("tier=gold", "mapping"),
        ({"tier": None}, "'tier': values must be"),
        ({"tier": {"level": 1}}, "'tier': values must be"),
        ({"tags": [1, "a"]}, "'tags': a sequence must hold one type"),
        ({"flags": [True, 1]}, "'flags': a sequence must hold one type"),
        ({"": "x"}, "non-empty strings"),
        ({7: "x"}, "non-empty strings"),
        ({"conversation.id": "other"}, "'conversation.id' is reserved"),
        ({"gen_ai.conversation.id": "other"}, "reserved"),
        ({"gen_ai.tool.name": "x"}, "reserved"),
        ({"roark.anything": "x"}, "'roark.anything' is reserved"),
        ({f"k{i}": i for i in range(33)}, "at most 32 attributes"),
    ],
)
def test_bad_attributes_fail_at_construction(attributes: Any, says: str) -> None:
    with pytest.raises(ValueError, match=r"RoarkObserver\(attributes=\.\.\.\)") as error:
        RoarkObserver(agent_id="a", attributes=attributes, api_key="rk_test_x")
    assert says in str(error.value)


def test_every_name_of_the_record_is_reserved() -> None:
    # Metric names and their attributes live on instruments, not on spans: a custom span
    # attribute may share them.
    metric = {sc.LOST_REASON, *(v for k, v in vars(sc).items() if k.startswith("METRIC_"))}
    for key, value in vars(sc).items():
        if key.isupper() and isinstance(value, str) and key != "INSTRUMENTATION_SCOPE":
            assert (value in sc.RESERVED_ATTRIBUTES) != (value in metric), key


def test_good_attributes_are_accepted() -> None:
    RoarkObserver(
        agent_id="a",
        api_key="rk_test_x",
        attributes={"tier": "gold", "vip": True, "seats": 3, "score": 0.5, "tags": ["a", "b"]},
    )


class Identify(FrameProcessor):
    """Identifies the caller from what they said, as a bot's CRM lookup would: late in the call."""

    def __init__(self, observer: RoarkObserver) -> None:
        super().__init__(name="identify")
        self._observer = observer
        self._heard = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame):
            self._heard += 1
            if self._heard == 2:
                self._observer.set_attributes(
                    {
                        "customer.id": "C-42",
                        "customer.tags": ["late", "vip"],
                        "conversation.id": "hijacked",  # reserved: rejected
                        "broken": {"not": "allowed"},  # bad type: rejected
                    }
                )
        await self.push_frame(frame, direction)


@pytest.mark.e2e
async def test_attributes_land_on_the_call_span_and_pipecats_conversation_span(
    exporter: RoarkSpanExporter,
    roark: LocalRoark,
    otel: Otel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    observer = RoarkObserver(agent_id="attrs", attributes={"customer.tier": "gold"})
    observer.set_attributes({"session.channel": "phone"})  # before the call starts
    call = SimulatedCall(DEFAULT_SCRIPT)
    processors = call.processors(observer.audio_processor)
    processors.insert(1, Identify(observer))
    task = PipelineTask(
        Pipeline(processors),
        params=PipelineParams(audio_out_sample_rate=24_000),
        observers=[observer],
        enable_tracing=True,
        additional_span_attributes={"deployment": "blue"},
    )
    with caplog.at_level(logging.WARNING, logger="pipecat_roark_otel"):
        await run(task)
    assert exporter.force_flush(15_000)
    ended = roark.wait_for_call_ended(observer.conversation_id, timeout=15)["ended"]
    assert ended["callEndedReason"] == "agent-ended"

    spans = otel.spans()
    call_span = next(s for s in spans if s.name == sc.SPAN_CALL)
    conversation = next(s for s in spans if s.name == "conversation")
    expected = {
        "customer.tier": "gold",
        "session.channel": "phone",
        "customer.id": "C-42",
        "customer.tags": ("late", "vip"),
    }
    for span in (call_span, conversation):
        attrs = dict(span.attributes or {})
        assert {k: attrs.get(k) for k in expected} == expected, span.name
        assert attrs[sc.CONVERSATION_ID] == observer.conversation_id
        assert "broken" not in attrs
    assert (conversation.attributes or {})["deployment"] == "blue"  # the task's own stay

    # The two bad ones were rejected, counted and logged without their values.
    assert _errors.dropped["attribute_rejected"] == 2
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "'conversation.id' is reserved" in logged and "'broken'" in logged
    assert "hijacked" not in logged and "allowed" not in logged


async def test_attributes_after_the_call_ended_are_rejected_not_raised(
    exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    observer = RoarkObserver(agent_id="attrs")
    await observer.on_pipeline_started()
    observer.set_attributes({"early": 1})
    await observer.aflush()
    observer.set_attributes({"late": 2})
    observer.set_attributes("not a mapping")  # type: ignore[arg-type]
    assert _errors.dropped["attribute_rejected"] == 2
    call_span = next(s for s in otel.spans() if s.name == sc.SPAN_CALL)
    assert (call_span.attributes or {}).get("early") == 1
    assert "late" not in (call_span.attributes or {})


async def test_a_call_takes_a_bounded_number_of_attributes(
    exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    """Our own call attributes, set at call end, must still fit under the SDK's limit."""
    observer = RoarkObserver(agent_id="attrs", attributes={f"a{i}": i for i in range(30)})
    await observer.on_pipeline_started()
    observer.set_attributes({"a0": "updated", "b1": 1, "b2": 2, "b3": 3})
    await observer.aflush(reason="client-disconnected")
    assert _errors.dropped["attribute_rejected"] == 1
    call_span = next(s for s in otel.spans() if s.name == sc.SPAN_CALL)
    attrs = call_span.attributes or {}
    assert attrs["a0"] == "updated" and attrs["b2"] == 2 and "b3" not in attrs
    assert attrs[sc.CALL_ENDED_REASON] == "client-disconnected"
