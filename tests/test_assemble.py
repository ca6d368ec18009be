"""call-ended reassembly from the end record and segment records: a pure table."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest

from pipecat_roark_otel.exporter._assemble import (
    assemble,
    assemble_call_ended,
    segment_entries,
)
from pipecat_roark_otel.exporter._payloads import CallEnded, CallStarted, TranscriptTurn

BASE: dict[str, Any] = {
    "event": "call-ended",
    "pipecatCallId": "c1",
    "eventTimestamp": "2025-01-01T00:01:00+00:00",
    "callStartedAt": "2025-01-01T00:00:00+00:00",
    "callEndedAt": "2025-01-01T00:01:00+00:00",
    "callEndedReason": "agent-ended",
}


def end(**extra: Any) -> dict[str, Any]:
    return {"segments": 0, "chunks": 0, "payload": {**BASE, **extra}}


def turn(seq: int, onset: int, content: str, role: str = "user") -> dict[str, Any]:
    record = {
        "role": role,
        "content": content,
        "timestamp": "2025-01-01T00:00:01+00:00",
        "endTimestamp": "2025-01-01T00:00:02+00:00",
    }
    return {"seq": seq, "kind": "turn", "onset_ns": onset, "record": record}


def call(seq: int, tid: str) -> dict[str, Any]:
    record = {
        "kind": "tool_call",
        "toolCallId": tid,
        "name": "lookup",
        "arguments": "{}",
        "timestamp": "2025-01-01T00:00:03+00:00",
    }
    return {"seq": seq, "kind": "tool", "onset_ns": 0, "record": record}


def result(seq: int, tid: str) -> dict[str, Any]:
    record = {
        "kind": "tool_result",
        "toolCallId": tid,
        "content": "ok",
        "timestamp": "2025-01-01T00:00:04+00:00",
    }
    return {"seq": seq, "kind": "tool", "onset_ns": 0, "record": record}


def contents(body: dict[str, Any]) -> list[str]:
    return [t["content"] for t in body["transcript"]]


def test_no_segments_omits_both_lists_and_keeps_nullable_pair() -> None:
    body, _ = assemble_call_ended(end(callStartedAt=None), [])
    assert body == {**BASE, "callStartedAt": None}
    assert list(body)[:5] == [
        "event",
        "pipecatCallId",
        "eventTimestamp",
        "callStartedAt",
        "callEndedAt",
    ]


@pytest.mark.parametrize(
    ("segments", "expected"),
    [
        ([{"entries": [turn(0, 10, "a"), turn(1, 20, "b")]}], ["a", "b"]),
        # by onset, across segments given out of order
        (
            [{"entries": [turn(5, 30, "c")]}, {"entries": [turn(1, 10, "a"), turn(2, 20, "b")]}],
            ["a", "b", "c"],
        ),
        # a later seq with an earlier onset (user spoke first, transcribed later)
        ([{"entries": [turn(0, 50, "bot", "assistant"), turn(1, 40, "user")]}], ["user", "bot"]),
        # same onset: seq breaks the tie
        ([{"entries": [turn(2, 10, "y"), turn(1, 10, "x")]}], ["x", "y"]),
        ([{"entries": []}, {"entries": [turn(0, 1, "only")]}], ["only"]),
    ],
)
def test_transcript_order(segments: list[dict[str, Any]], expected: list[str]) -> None:
    assert contents(assemble_call_ended(end(), segments)[0]) == expected


def test_tools_by_seq_and_transcript_absent_when_no_turns() -> None:
    segs = [{"entries": [result(3, "t1"), call(2, "t1")]}, {"entries": [call(4, "t2")]}]
    body, _ = assemble_call_ended(end(), segs)
    assert "transcript" not in body
    assert [(t["kind"], t["toolCallId"]) for t in body["toolCalls"]] == [
        ("tool_call", "t1"),
        ("tool_result", "t1"),
        ("tool_call", "t2"),
    ]


def test_recording_fields_pass_through() -> None:
    body, _ = assemble_call_ended(
        end(recordingSampleRate=16000, recordingNumChannels=2, agentSpokeFirst=True), []
    )
    assert body["recordingSampleRate"] == 16000 and body["agentSpokeFirst"] is True


@pytest.mark.parametrize(
    "segments",
    [
        [{"entries": [{**turn(0, 1, "x"), "record": {"role": "robot", "content": "x"}}]}],
        [{"entries": [{**call(0, "t"), "record": {"kind": "tool_call"}}]}],
    ],
)
def test_a_bad_record_is_left_out_and_counted(segments: list[dict[str, Any]]) -> None:
    good = {"entries": [{**turn(5, 9, "kept"), "seq": 9}]}
    body, rejected = assemble_call_ended(end(), [*segments, good])
    assert rejected == 1
    assert [t["content"] for t in body["transcript"]] == ["kept"]


@pytest.mark.parametrize(
    ("end_record", "segments", "error"),
    [
        (
            {"segments": 0, "chunks": 0, "payload": {**BASE, "callEndedReason": 3}},
            [],
            pydantic.ValidationError,
        ),
        (
            {"segments": 0, "chunks": 0, "payload": {**BASE, "transcriptx": []}},
            [],
            pydantic.ValidationError,
        ),
    ],
)
def test_malformed_inputs_raise(
    end_record: dict[str, Any], segments: list[dict[str, Any]], error: type[Exception]
) -> None:
    with pytest.raises(error):
        assemble_call_ended(end_record, segments)


def test_a_segment_file_gives_what_its_parsed_record_gives() -> None:
    """Delivery reads a segment file's bytes in one go; the result is the per-record one,
    also when one entry is bad or loosely typed (then each entry is checked alone)."""
    loose = {**turn(7, 70, "seq as text"), "seq": "7"}
    bad = {**turn(8, 80, "x"), "record": {"role": "robot", "content": "x"}}
    segments = [
        {"entries": [turn(0, 10, "a"), call(1, "t1"), result(2, "t1"), turn(3, 5, "b")]},
        {"entries": [turn(4, 40, "c"), loose, bad], "extra": 1},
        {"entries": []},
        {},
    ]
    for seg in segments:
        from_bytes = segment_entries(json.dumps(seg).encode())
        assert from_bytes == segment_entries(seg)
    assert segment_entries(json.dumps(segments[1]).encode())[1] == 1
    assert [e[3].content for e in segment_entries(json.dumps(segments[0]).encode())[0][:1]] == ["a"]
    body, rejected = assemble_call_ended(end(), segments)
    assert (contents(body), rejected) == (["b", "a", "c", "seq as text"], 1)


@pytest.mark.parametrize(
    ("raw", "error"),
    [(b'{"entries": [', ValueError), (b"[1, 2]", TypeError), (b"\xff\xfe", ValueError)],
)
def test_a_damaged_segment_file_raises(raw: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        segment_entries(raw)


ODD = ["plain", "é 中文 😀", 'ctl \x00\x01\x1f\x7f \n\t " \\ / \u2028', "", "\ufeff"]


@pytest.mark.parametrize("text", ODD)
def test_wire_json_is_the_json_of_the_wire_dict(text: str) -> None:
    """Bodies go out as pydantic's JSON bytes, the same bytes json.dumps of wire() gave."""

    def dumps(body: dict[str, Any]) -> bytes:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()

    turn_model = TranscriptTurn(
        role="user", content=text, timestamp="t", endTimestamp="e", audioOffsetMs=3
    )
    for started_at in ("2025-01-01T00:00:00+00:00", None):
        payload = {**BASE, "callStartedAt": started_at, "callEndedReason": text or "r"}
        ended = assemble(payload, [(1, 0, "turn", turn_model)])
        assert ended.wire_json() == dumps(ended.wire())
        assert isinstance(ended, CallEnded)
    begun = CallStarted(pipecatCallId="c1", eventTimestamp="t", agentId="a", agentName=text)
    assert begun.wire_json() == dumps(begun.wire())
