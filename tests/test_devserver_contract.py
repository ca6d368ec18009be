"""The local Roark reads the contract on its own: a drift in our wire models fails here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest

import pipecat_roark_otel.devserver as devserver
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import _payloads

from .support import PRESIGN, T0, WEBHOOK, ended_body


def test_the_devserver_never_imports_the_exporter() -> None:
    package = Path(devserver.__file__).parent
    imports = re.compile(r"^\s*(?:from|import)\s+(\S+)", re.MULTILINE)
    for source in package.glob("*.py"):
        for name in imports.findall(source.read_text()):
            assert "exporter" not in name, f"{source.name} imports {name}"


# A drift we could make in _payloads: tool arguments sent as an object, not a JSON string.
class _DriftedToolCall(_payloads._Wire):
    kind: Literal["tool_call"] = "tool_call"
    toolCallId: str
    name: str
    arguments: dict[str, Any]
    timestamp: str


class _DriftedCallEnded(_payloads._Wire):
    event: Literal["call-ended"] = "call-ended"
    pipecatCallId: str
    eventTimestamp: str
    callStartedAt: str | None
    callEndedAt: str | None
    callEndedReason: str
    toolCalls: list[_DriftedToolCall] | None = None


def test_a_payload_our_drifted_models_accept_is_refused(
    roark: LocalRoark, api: httpx.Client
) -> None:
    drifted = _DriftedCallEnded(
        pipecatCallId="c1",
        eventTimestamp=T0,
        callStartedAt=T0,
        callEndedAt=T0,
        callEndedReason="agent-ended",
        toolCalls=[
            _DriftedToolCall(toolCallId="t1", name="lookup", arguments={"order": 1}, timestamp=T0)
        ],
    )
    resp = api.post(WEBHOOK, json=drifted.wire())
    assert resp.status_code == 422, resp.text
    assert any(d["field"] == "toolCalls.0.tool_call.arguments" for d in resp.json()["details"])
    assert roark.call("c1") is None


_TURN = {"role": "user", "content": "hi", "timestamp": T0, "endTimestamp": T0}
_CALL = {"kind": "tool_call", "toolCallId": "t1", "name": "f", "arguments": "{}", "timestamp": T0}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            ended_body("c1", recordingSampleRate=2**40, recordingNumChannels=2),
            "recordingSampleRate",
        ),
        (
            ended_body("c1", recordingSampleRate=16000, recordingNumChannels=0),
            "recordingNumChannels",
        ),
        (
            ended_body("c1", recordingSampleRate=16000.0, recordingNumChannels=2),
            "recordingSampleRate",
        ),
        (ended_body("c1", agentSpokeFirst="yes"), "agentSpokeFirst"),
        (
            ended_body("c1", transcript=[{**_TURN, "audioOffsetMs": -1}]),
            "transcript.0.audioOffsetMs",
        ),
        (
            ended_body("c1", transcript=[{**_TURN, "audioOffsetMs": 2**62}]),
            "transcript.0.audioOffsetMs",
        ),
        (ended_body("c1", transcript=[{**_TURN, "speaker": "x"}]), "transcript.0.speaker"),
        (
            ended_body("c1", transcript=[{k: v for k, v in _TURN.items() if k != "endTimestamp"}]),
            "endTimestamp",
        ),
        (ended_body("c1", toolCalls=[{**_CALL, "kind": "tool_use"}]), "toolCalls.0"),
        (ended_body("c1", toolCalls=[{**_CALL, "arguments": ["x"]}]), "arguments"),
        (
            ended_body("c1", toolCalls=[{**_CALL, "kind": "tool_result", "content": {"a": 1}}]),
            "toolCalls.0.tool_result",
        ),
        (ended_body("c1", toolCalls=[{**_CALL, "toolCallId": 7}]), "toolCallId"),
        (
            ended_body("c1", transcript=[{**_TURN, "timestamp": "2025-01-01 10:00"}]),
            "transcript.0.timestamp",
        ),
    ],
    ids=[
        "rate-2**40",
        "zero-channels",
        "float-rate",
        "string-bool",
        "negative-offset",
        "huge-offset",
        "unknown-turn-field",
        "turn-without-end",
        "unknown-tool-kind",
        "arguments-not-a-string",
        "result-content-object",
        "numeric-tool-call-id",
        "naive-turn-time",
    ],
)
def test_contract_drifts_are_422_naming_the_field(
    roark: LocalRoark, api: httpx.Client, body: dict[str, Any], field: str
) -> None:
    resp = api.post(WEBHOOK, json=body)
    assert resp.status_code == 422, resp.text
    assert any(field in d["field"] for d in resp.json()["details"]), resp.text
    assert roark.calls() == []


@pytest.mark.parametrize("index", [2**62, 10**7, True])
def test_presign_refuses_chunk_indices_out_of_range(
    roark: LocalRoark, api: httpx.Client, index: object
) -> None:
    body = {"pipecatCallId": "c1", "chunkIndex": index, "contentType": "audio/pcm"}
    assert api.post(PRESIGN, json=body).status_code == 422
    assert roark.calls() == []


def test_what_our_exporter_models_send_is_accepted(roark: LocalRoark, api: httpx.Client) -> None:
    """The other direction: today's sender models and the receiver's reading agree."""
    turn = _payloads.TranscriptTurn(
        role="assistant", content="Hi", timestamp=T0, endTimestamp=T0, audioOffsetMs=0
    )
    tools: list[_payloads.ToolCallRecord | _payloads.ToolResultRecord] = [
        _payloads.ToolCallRecord(toolCallId="t1", name="f", arguments="{}", timestamp=T0),
        _payloads.ToolResultRecord(toolCallId="t1", content="ok", timestamp=T0),
    ]
    started = _payloads.CallStarted(pipecatCallId="c1", eventTimestamp=T0, agentId="a")
    ended = _payloads.CallEnded(
        pipecatCallId="c1",
        eventTimestamp=T0,
        callStartedAt=None,
        callEndedAt=T0,
        callEndedReason="agent-ended",
        agentSpokeFirst=True,
        recordingSampleRate=16000,
        recordingNumChannels=2,
        transcript=[turn],
        toolCalls=tools,
    )
    chunk = _payloads.ChunkUploadRequest(pipecatCallId="c1", chunkIndex=0)
    assert api.post(WEBHOOK, json=started.wire()).status_code == 200
    assert api.post(PRESIGN, json=chunk.wire()).status_code == 200
    assert api.post(WEBHOOK, json=ended.wire()).status_code == 200
