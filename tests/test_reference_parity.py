"""Same call, two observers: our wire output matches Roark's own observer (pipecat-roark).

Both run on one real PipelineTask and deliver to the same local Roark. Everything the
contract fixes must agree; times differ by nature, and audio offsets differ on purpose
(ours are on the recording's own timeline, the reference's on the wall clock).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

pipecat_roark = pytest.importorskip("pipecat_roark", reason="pip install -e '.[bench]'")

from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.task import PipelineParams, PipelineTask  # noqa: E402

from pipecat_roark_otel import RoarkObserver  # noqa: E402
from pipecat_roark_otel.devserver import LocalRoark  # noqa: E402
from pipecat_roark_otel.exporter import RoarkSpanExporter  # noqa: E402
from pipecat_roark_otel.simulation import (  # noqa: E402
    DEFAULT_SCRIPT,
    Exchange,
    Script,
    SimulatedCall,
    Tool,
)

from .conftest import Otel  # noqa: E402
from .support.capture import audible, run, stereo  # noqa: E402

SCRIPTS = {
    "greeting-tool-interruption": DEFAULT_SCRIPT,
    "user-first": Script(
        (
            Exchange(user="hello there", bot="Hi, how can I help?", user_segments=2),
            Exchange(user="bye", bot="Goodbye"),
        )
    ),
    "odd-tool-values": Script(
        (Exchange(user="check it", bot="Checking.", tool=Tool("lookup", None, ["a", 1], "t9")),),
        greeting="Hi",
    ),
}
TIMING = {"timestamp", "endTimestamp", "audioOffsetMs", "endAudioOffsetMs"}


def _key(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True)


def _without_timing(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def _both(
    roark: LocalRoark, name: str, script: Script, speed: float, **agent: str
) -> tuple[RoarkObserver, Any, PipelineTask]:
    """Ours (call ``ours-<name>``) and the reference (``ref-<name>``) on one simulated call."""
    ours = RoarkObserver(agent_id="a", conversation_id=f"ours-{name}", **agent)
    ref = pipecat_roark.RoarkObserver(
        api_key=roark.api_key, agent_id="a", runner_args={"session_id": f"ref-{name}"}, **agent
    )
    # The reference hard-codes api.roark.ai; point its client at the local Roark.
    ref._client._webhook_url = f"{roark.base_url}/v1/integrations/pipecat"
    ref._client._chunk_upload_url_endpoint = f"{ref._client._webhook_url}/chunk-upload-url"
    sim = SimulatedCall(Script(script.exchanges, greeting=script.greeting, speed=speed))
    task = PipelineTask(
        Pipeline([*sim.processors(ours.audio_processor), ref.audio_processor]),
        params=PipelineParams(audio_out_sample_rate=24_000),
        observers=[ours, ref],
        enable_tracing=True,
    )
    return ours, ref, task


async def _run_both(roark: LocalRoark, name: str, script: Script) -> None:
    _, ref, task = _both(roark, name, script, 8, agent_name="A")
    await run(task)
    await ref.aflush()  # waits for its own call-ended send


@pytest.mark.parametrize("name", list(SCRIPTS))
async def test_wire_output_matches_the_reference(
    name: str, exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    await _run_both(roark, name, SCRIPTS[name])
    assert exporter.force_flush(20_000)
    ours = roark.wait_for_call_ended(f"ours-{name}", timeout=20)
    ref = roark.wait_for_call_ended(f"ref-{name}", timeout=20)

    assert list(ours["started"]) == list(ref["started"])
    assert {
        k: v for k, v in ours["started"].items() if k not in ("pipecatCallId", "eventTimestamp")
    } == {k: v for k, v in ref["started"].items() if k not in ("pipecatCallId", "eventTimestamp")}
    a, b = ours["ended"], ref["ended"]
    assert list(a) == list(b)
    for key in (
        "callEndedReason",
        "agentSpokeFirst",
        "recordingSampleRate",
        "recordingNumChannels",
    ):
        assert a.get(key) == b.get(key), key
    # The same records, fields included. The order is ours to get right: now and then the
    # reference opens the reply after an interrupted one at the interruption, before the
    # caller's turn it answers, and lists it first.
    ours_turns, ref_turns = a.get("transcript", []), b.get("transcript", [])
    assert sorted(map(_key, _without_timing(ours_turns))) == sorted(
        map(_key, _without_timing(ref_turns))
    )
    script = SCRIPTS[name]
    spoken = ["assistant"] if script.greeting else []
    spoken += ["user", "assistant"] * len(script.exchanges)
    assert [t["role"] for t in ours_turns] == spoken
    assert [t["timestamp"] for t in ours_turns] == sorted(t["timestamp"] for t in ours_turns)
    assert _without_timing(a.get("toolCalls", [])) == _without_timing(b.get("toolCalls", []))
    # The same speech on each channel, to 0.2 s. The reference's Pipecat recorder holds
    # back ~60 ms of the caller's 16 kHz audio in its per-frame resampler (placed late
    # when the caller resumes, lost at the end), so its WAV runs a little shorter.
    ours_wav, ref_wav = roark.wav_bytes(f"ours-{name}"), roark.wav_bytes(f"ref-{name}")
    assert ours_wav is not None and ref_wav is not None
    rate, ours_user, ours_bot = stereo(ours_wav)
    _, ref_user, ref_bot = stereo(ref_wav)
    for mine, theirs in ((ours_user, ref_user), (ours_bot, ref_bot)):
        assert abs(len(audible(mine)) - len(audible(theirs))) <= rate // 5
    assert len(ref_user) - rate // 10 <= len(ours_user) <= 1.1 * len(ref_user) + rate // 10


@pytest.mark.parametrize("how", ["cancel", "aflush"])
async def test_ending_early_matches_the_reference(
    how: str, exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel
) -> None:
    """The host cancels mid-call, or a disconnect handler calls aflush() first."""
    ours, ref, task = _both(roark, how, DEFAULT_SCRIPT, 2)
    running = asyncio.ensure_future(run(task))
    await asyncio.sleep(2.5)  # the greeting has played; the caller is mid-turn
    if how == "aflush":
        await ours.aflush(reason="client-disconnected")
        await ref.aflush(reason="client-disconnected")
    await task.cancel()
    await running
    await ref.aflush()
    assert exporter.force_flush(20_000)
    a = roark.wait_for_call_ended(f"ours-{how}", timeout=20)["ended"]
    b = roark.wait_for_call_ended(f"ref-{how}", timeout=20)["ended"]
    assert list(a) == list(b)
    assert a["callEndedReason"] == b["callEndedReason"]
    assert a.get("agentSpokeFirst") == b.get("agentSpokeFirst")
    assert _without_timing(a.get("transcript", [])) == _without_timing(b.get("transcript", []))
