"""Pure tables over CallCapture and its helpers: frame facts in, records out. No Pipecat."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipecat_roark_otel._capture import (
    CallCapture,
    Record,
    ToolCall,
    ToolResult,
    Turn,
    iso_from_ns,
    join_chunks,
)
from pipecat_roark_otel._tool_values import arguments_to_json, result_to_string

MS = 1_000_000
T0 = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20+00:00


def at(ms: int) -> int:
    return T0 + ms * MS


def turns(records: list[Record]) -> list[tuple[str, str]]:
    return [(r.role, r.content) for r in records if isinstance(r, Turn)]


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


class _Hostile:
    """Breaks every way of being turned into text."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __str__(self) -> str:
        raise RuntimeError("no str")


def _circular() -> dict[str, object]:
    d: dict[str, object] = {"a": 1}
    d["self"] = d
    return d


# -- helpers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ns", "iso"),
    [
        (0, "1970-01-01T00:00:00+00:00"),
        (T0, "2023-11-14T22:13:20+00:00"),
        (T0 + 123_456_789, "2023-11-14T22:13:20.123456+00:00"),
    ],
)
def test_iso_from_ns(ns: int, iso: str) -> None:
    assert iso_from_ns(ns) == iso


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (None, "{}"),
        ('{"order_id": "A-1"}', '{"order_id": "A-1"}'),  # a string passes verbatim
        ("not json at all", "not json at all"),
        ({"order_id": "A-1", "n": [1, 2]}, '{"order_id":"A-1","n":[1,2]}'),
        ({}, "{}"),
        ([1, "x"], '[1,"x"]'),
        (7, "7"),
        (True, "true"),
        ({"when": _Opaque()}, '{"when":"<opaque>"}'),
    ],
)
def test_arguments_to_json(value: object, wire: str) -> None:
    """Capture rule 10: arguments are a JSON string per the contract."""
    assert arguments_to_json(value) == wire


@pytest.mark.parametrize(
    "value",
    [_Opaque(), {1, 2}, b"\x00\xff", {(1, 2): "tuple key"}, _circular(), _Hostile(), [_Hostile()]],
    ids=["object", "set", "bytes", "tuple-key", "circular", "hostile", "hostile-in-list"],
)
def test_arguments_never_crash_and_stay_json(value: object) -> None:
    """Capture rule 10: non-serialisable values never crash capture."""
    wire = arguments_to_json(value)
    assert isinstance(wire, str)
    json.loads(wire)


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (None, ""),
        ("shipped", "shipped"),
        ("", ""),
        ({"status": "shipped"}, '{"status":"shipped"}'),
        ([1, 2], "[1,2]"),
        ([], "[]"),
        (42, "42"),
        (1.5, "1.5"),
        (True, "True"),
        (_Opaque(), "<opaque>"),
        ({"at": _Opaque()}, '{"at":"<opaque>"}'),
    ],
)
def test_result_to_string(value: object, wire: str) -> None:
    """Capture rule 10: objects/lists compact JSON, scalars str(), None ""."""
    assert result_to_string(value) == wire


@pytest.mark.parametrize(
    "value",
    [{(1, 2): "tuple key"}, _circular(), [_circular()], _Hostile(), {"x": _Hostile()}],
    ids=["tuple-key", "circular", "circular-in-list", "hostile", "hostile-in-dict"],
)
def test_result_never_crashes(value: object) -> None:
    """Capture rule 10: non-serialisable values never crash capture."""
    assert isinstance(result_to_string(value), str)


class _Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class _Slot:
    day: datetime.date
    price: decimal.Decimal


WHEN = datetime.datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=datetime.UTC)
ID = uuid.UUID("12345678-1234-5678-1234-567812345678")


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ((1, "a"), '[1,"a"]'),
        ({3, 1, 2}, "[1,2,3]"),
        (frozenset({"b", "a"}), '["a","b"]'),
        ({"slots": ({"at": WHEN},)}, '{"slots":[{"at":"2026-03-04T05:06:07.890000+00:00"}]}'),
        ({"day": datetime.date(2026, 3, 4)}, '{"day":"2026-03-04"}'),
        ({"total": decimal.Decimal("12.50"), "id": ID}, f'{{"total":"12.50","id":"{ID}"}}'),
        ([b"hi", b"\xff"], '["hi","/w=="]'),
        ({"color": _Color.RED, "n": float("nan")}, '{"color":"red","n":"nan"}'),
        ({(1, 2): "tuple key", 3: "int key"}, '{"[1,2]":"tuple key","3":"int key"}'),
        (
            [_Slot(datetime.date(2026, 1, 2), decimal.Decimal("9.99"))],
            '[{"day":"2026-01-02","price":"9.99"}]',
        ),
        ({"who": _Opaque()}, '{"who":"<opaque>"}'),
        ({"é": "ü"}, '{"\\u00e9":"\\u00fc"}'),
    ],
    ids=[
        "tuple",
        "set",
        "frozenset",
        "nested-datetime",
        "date",
        "decimal-uuid",
        "bytes",
        "enum-nan",
        "non-str-keys",
        "dataclass",
        "object",
        "ascii-escaped",
    ],
)
def test_containers_keep_their_shape_with_readable_leaves(value: object, wire: str) -> None:
    """Capture rule 10: tuples and sets as arrays, non-JSON leaves as readable strings."""
    assert result_to_string(value) == wire
    assert arguments_to_json(value) == wire
    json.loads(wire)


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (WHEN, str(WHEN)),
        (decimal.Decimal("1.10"), "1.10"),
        (ID, str(ID)),
        (False, "False"),
    ],
)
def test_scalar_results_are_their_str(value: object, wire: str) -> None:
    """Contract: scalars via str(), whatever JSON would make of them."""
    assert result_to_string(value) == wire


@pytest.mark.parametrize(
    ("parts", "joined"),
    [
        ([], ""),
        ([("Hello", False), ("there", False)], "Hello there"),
        (
            [("Hello!", False), ("How", False), ("are", False), ("you?", False)],
            "Hello! How are you?",
        ),
        ([("Copper", True), ("line", True)], "Copperline"),
        ([("Hi", True), (" there", True), ("!", True)], "Hi there!"),
        ([("Hello ", False), ("world", False)], "Hello world"),  # never two spaces
        ([("", False), ("a", False), ("", True)], "a"),
    ],
)
def test_join_chunks(parts: list[tuple[str, bool]], joined: str) -> None:
    """Capture rule 9: pre-spaced deltas concatenate as-is; others get one space."""
    assert join_chunks(parts) == joined


_word = st.text(st.characters(categories=("L", "N", "P")), min_size=1, max_size=8)


@given(st.lists(_word, max_size=12))
def test_join_chunks_words_get_one_space(words: list[str]) -> None:
    assert join_chunks([(w, False) for w in words]) == " ".join(words)


@given(st.lists(st.text(max_size=6), max_size=12))
def test_join_chunks_spaced_deltas_concatenate(deltas: list[str]) -> None:
    """Whatever the deltas hold, including their own spaces, they are kept as sent."""
    assert join_chunks([(d, True) for d in deltas]) == "".join(deltas)


# -- user turns -----------------------------------------------------------------


def test_user_turn_is_segments_stamped_at_speech_edges() -> None:
    """Capture rules 5 and 6: segments aggregate; onset/offset from the speaking edges."""
    cap = CallCapture()
    assert cap.user_started(at(0)) == []
    cap.transcription("I'd like", False, at(900), user_id="caller-1", language="en-US")
    cap.user_stopped(at(1000))
    cap.transcription("to check", False, at(1500))
    [turn] = cap.bot_started(at(2000))
    assert isinstance(turn, Turn)
    assert (turn.role, turn.content) == ("user", "I'd like to check")
    assert turn.timestamp == iso_from_ns(at(0))
    assert turn.end_timestamp == iso_from_ns(at(1000))
    assert turn.onset_ns == at(0)
    assert (turn.user_id, turn.language) == ("caller-1", "en-US")


def test_vad_edges_stamp_the_speech_not_the_turn_decision() -> None:
    """Capture rule 6 on Pipecat >= 1.x: UserStarted/Stopped mark the turn strategy's
    decision (the stop seconds later, after turn analysis); the VAD frames mark the
    speech, confirmed start_secs/stop_secs after it began/ended. Seen on a real bot."""
    cap = CallCapture()
    cap.speech_started(at(1200), 200 * MS)  # VADUserStartedSpeakingFrame(start_secs=0.2)
    assert cap.user_started(at(1201)) == []
    cap.speech_stopped(at(2400), 200 * MS)  # a pause inside the turn
    cap.speech_started(at(2700), 200 * MS)  # the caller goes on: same turn
    cap.speech_stopped(at(3400), 200 * MS)
    cap.transcription("I'd like to check on my order", False, at(3450))
    cap.user_stopped(at(5900))  # turn analysis and STT settle later
    [turn] = cap.bot_started(at(6300))
    assert isinstance(turn, Turn)
    assert (turn.timestamp, turn.end_timestamp) == (iso_from_ns(at(1000)), iso_from_ns(at(3200)))
    # The next turn starts from its own speech, not a stale edge.
    cap.speech_started(at(8200), 200 * MS)
    cap.user_started(at(8300))
    cap.transcription("thanks", False, at(8900))
    cap.user_stopped(at(9000))
    [turn] = cap.flush_all(at(9100))
    assert isinstance(turn, Turn)
    assert (turn.timestamp, turn.end_timestamp) == (iso_from_ns(at(8000)), iso_from_ns(at(9000)))


def test_a_transcript_ahead_of_its_turn_start_is_that_turn() -> None:
    """Seen on a real bot under load: VAD start, VAD stop, the STT final, and only then
    UserStartedSpeakingFrame. One turn, stamped at the VAD's speech."""
    cap = CallCapture()
    cap.speech_started(at(1200), 200 * MS)
    cap.speech_stopped(at(2700), 200 * MS)
    assert cap.transcription("I'd like to check on my order", False, at(3000)) == []
    assert cap.user_started(at(3300)) == []
    cap.user_stopped(at(4200))
    [turn] = cap.bot_started(at(4500))
    assert isinstance(turn, Turn)
    assert turn.content == "I'd like to check on my order"
    assert (turn.timestamp, turn.end_timestamp) == (iso_from_ns(at(1000)), iso_from_ns(at(2500)))


def test_back_to_back_user_turns_stay_separate() -> None:
    """Capture rule 5: the next UserStartedSpeakingFrame closes the pending turn."""
    cap = CallCapture()
    out: list[Record] = []
    out += cap.user_started(at(0))
    cap.transcription("first", False, at(100))
    cap.user_stopped(at(200))
    out += cap.user_started(at(300))
    cap.transcription("second", False, at(400))
    cap.user_stopped(at(500))
    out += cap.flush_all(at(600))
    assert turns(out) == [("user", "first"), ("user", "second")]
    assert [r.seq for r in out] == [1, 2]


@pytest.mark.parametrize("boundary", ["bot_started", "user_started", "flush_all"])
def test_user_turn_closes_at_each_boundary(boundary: str) -> None:
    cap = CallCapture()
    cap.transcription("hello", False, at(0))
    out = getattr(cap, boundary)(at(50))
    assert turns(out) == [("user", "hello")]


@pytest.mark.parametrize(
    ("frame_timestamp", "expected"),
    [
        ("2023-11-14T22:13:19.500+00:00", "2023-11-14T22:13:19.500+00:00"),
        (None, iso_from_ns(at(100))),
        ("", iso_from_ns(at(100))),
        (12345, iso_from_ns(at(100))),
    ],
)
def test_no_onset_frame_falls_back_and_end_is_close_time(
    frame_timestamp: object, expected: str
) -> None:
    """Capture rule 6: the frame's own timestamp, else the clock; the end is never omitted."""
    cap = CallCapture()
    cap.transcription("hi", False, at(100), frame_timestamp=frame_timestamp)
    [turn] = cap.flush_all(at(700))
    assert isinstance(turn, Turn)
    assert turn.timestamp == expected
    assert turn.end_timestamp == iso_from_ns(at(700))


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_blank_transcription_leaves_nothing(text: str) -> None:
    cap = CallCapture()
    cap.user_started(at(0))
    cap.transcription(text, False, at(10))
    assert cap.flush_all(at(20)) == []


def test_spaced_transcription_deltas_concatenate() -> None:
    cap = CallCapture()
    cap.transcription("Copper", True, at(0))
    cap.transcription("line", True, at(1))
    cap.transcription(" rocks", True, at(2))
    assert turns(cap.flush_all(at(3))) == [("user", "Copperline rocks")]


# -- assistant turns ---------------------------------------------------------------


def _speak(cap: CallCapture, words: list[str], *, played: int, start_id: int = 1) -> None:
    """TTS generates every word; the output transport plays only the first ``played``."""
    for i, word in enumerate(words):
        cap.tts_text(start_id + i, word, False, at(10 + i), played=False)
    for i, word in enumerate(words[:played]):
        cap.tts_text(start_id + i, word, False, at(100 + i), played=True)


def test_assistant_turn_is_the_words_played() -> None:
    """Capture rule 7: generated but unplayed words are not part of the transcript."""
    cap = CallCapture()
    cap.has_output_transport = True
    cap.bot_started(at(0))
    _speak(cap, ["Your", "order", "shipped", "yesterday"], played=2)
    # The interruption is broadcast upstream of the transport, which plays on until it
    # gets there: the cut reply stays open to the words played meanwhile.
    assert cap.bot_stopped(at(500), interrupted=True) == []
    assert cap.user_started(at(505)) == []
    cap.tts_text(3, "shipped", False, at(510), played=True)
    assert cap.bot_stopped(at(520)) == []  # the transport's own stop, handling it
    [turn] = cap.interruption_played()  # past the transport: nothing more plays
    assert isinstance(turn, Turn)
    assert (turn.role, turn.content, turn.interrupted) == ("assistant", "Your order shipped", True)
    assert turn.timestamp == iso_from_ns(at(0))
    assert turn.end_timestamp == iso_from_ns(at(500))


def test_without_output_transport_generated_words_count() -> None:
    """Capture rule 7: text that never passes an output transport falls back to generated."""
    cap = CallCapture()
    _speak(cap, ["Sure", "thing"], played=0)
    assert turns(cap.flush_all(at(300))) == [("assistant", "Sure thing")]


def test_each_tts_frame_counts_once_per_kind() -> None:
    """Capture rule 1: one action per frame id, however many hops report it."""
    cap = CallCapture()
    cap.has_output_transport = True
    for _ in range(3):
        cap.tts_text(7, "Hello!", False, at(0), played=False)
        cap.tts_text(7, "Hello!", False, at(1), played=True)
    assert turns(cap.bot_stopped(at(2))) == [("assistant", "Hello!")]


def test_unplayed_turn_leaves_nothing_not_even_its_timing() -> None:
    """Capture rule 8: the next turn starts at its own words, not the dropped turn's onset."""
    cap = CallCapture()
    cap.has_output_transport = True
    cap.bot_started(at(0))
    _speak(cap, ["never", "heard"], played=0)
    assert cap.bot_stopped(at(200), interrupted=True) == []
    assert cap.bot_stopped(at(210)) == []  # the transport's own stop after the interruption
    cap.tts_text(50, "Second", False, at(1000), played=True)
    cap.tts_text(51, "try", False, at(1010), played=True)
    [turn] = cap.bot_stopped(at(1500))
    assert isinstance(turn, Turn)
    assert turn.content == "Second try"
    assert turn.timestamp == iso_from_ns(at(1000))
    assert turn.end_timestamp == iso_from_ns(at(1500))
    assert cap.first_speaker == "assistant"


def test_bot_turn_without_words_is_dropped() -> None:
    cap = CallCapture()
    cap.has_output_transport = True
    cap.bot_started(at(0))
    assert cap.bot_stopped(at(100)) == []
    assert cap.flush_all(at(200)) == []
    assert cap.first_speaker is None


def test_spaced_tts_deltas_concatenate() -> None:
    """Capture rule 9, for realtime speech-to-speech deltas."""
    cap = CallCapture()
    for i, delta in enumerate(["Copper", "line", " here", "."]):
        cap.tts_text(i, delta, True, at(i), played=False)
    assert turns(cap.flush_all(at(10))) == [("assistant", "Copperline here.")]


def test_latency_is_bot_onset_minus_user_offset() -> None:
    cap = CallCapture()
    cap.user_started(at(0))
    cap.transcription("hi", False, at(100))
    cap.user_stopped(at(300))
    out = cap.bot_started(at(1100))
    cap.tts_text(1, "hello", False, at(1100), played=False)
    out += cap.bot_stopped(at(1400))
    _user, bot = out
    assert isinstance(bot, Turn)
    assert bot.latency_ms == 800
    assert cap.first_speaker == "user"


# -- tools ---------------------------------------------------------------------


def test_one_tool_call_id_is_one_invocation() -> None:
    """Capture rules 2 and 10: repeats of an id leave one call and one result."""
    cap = CallCapture()
    out: list[Record] = []
    for _ in range(2):
        out += cap.tool_call("call_1", "lookup_order", {"order_id": "A-1042"}, at(0))
        out += cap.tool_result("call_1", {"status": "shipped"}, at(10))
    call, result = out
    assert call == ToolCall(1, "call_1", "lookup_order", '{"order_id":"A-1042"}', at(0), None)
    assert result == ToolResult(2, "call_1", '{"status":"shipped"}', at(10), None)


def test_tool_calls_without_id_are_not_merged() -> None:
    cap = CallCapture()
    out = cap.tool_call(None, None, None, at(0)) + cap.tool_call("", "f", "{}", at(1))
    assert [(r.tool_call_id, r.name, r.arguments) for r in out if isinstance(r, ToolCall)] == [
        ("", "", "{}"),
        ("", "f", "{}"),
    ]


# -- offsets -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("anchor", "ns", "ms"),
    [(None, at(5), None), (at(0), None, None), (at(0), at(1234), 1234), (at(100), at(50), 0)],
)
def test_offset_ms_counts_from_the_anchor(
    anchor: int | None, ns: int | None, ms: int | None
) -> None:
    """Capture rule 13: ms from recording sample 0; none before any audio."""
    cap = CallCapture()
    cap.anchor_ns = anchor
    assert cap.offset_ms(ns) == ms


def test_records_carry_offsets_once_audio_is_anchored() -> None:
    cap = CallCapture()
    cap.anchor_ns = at(1000)
    cap.user_started(at(1500))
    cap.transcription("hi", False, at(1700))
    cap.user_stopped(at(2000))
    [turn] = cap.flush_all(at(2100))
    [call] = cap.tool_call("c", "f", {}, at(2500))
    assert isinstance(turn, Turn)
    assert (turn.audio_offset_ms, turn.end_audio_offset_ms) == (500, 1000)
    assert call.audio_offset_ms == 1500


# -- hostile input (capture rule 19) ---------------------------------------------


@pytest.mark.parametrize("text", [None, 42, b"bytes", ["list"]], ids=repr)
def test_non_text_is_ignored_so_the_call_can_still_end(text: object) -> None:
    """Capture rule 19: garbage text never breaks the flush at the end of the call."""
    cap = CallCapture()
    records = cap.transcription(text, False, at(0))  # type: ignore[arg-type]
    records += cap.transcription("real words", False, at(1))
    records += cap.tts_text(1, text, False, at(2), played=False)  # type: ignore[arg-type]
    records += cap.tts_text(2, "reply", False, at(3), played=False)
    records += cap.flush_all(at(4))
    assert turns(records) == [("user", "real words"), ("assistant", "reply")]


_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.datetimes(timezones=st.just(datetime.UTC))
    | st.dates()
    | st.decimals()
    | st.uuids()
    | st.binary(max_size=8)
    | st.builds(_Opaque)
)
_keys = st.text(max_size=4) | st.integers() | st.tuples(st.integers(), st.text(max_size=2))
_values = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.frozensets(st.integers() | st.text(max_size=4), max_size=4)
        | st.dictionaries(_keys, inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.lists(_values, max_size=4).map(tuple) | st.dictionaries(_keys, _values, max_size=4))
def test_any_container_goes_as_json_of_its_shape(value: tuple[object, ...] | dict) -> None:
    """Capture rule 10: whatever a tool hands back, Roark gets parseable JSON of that shape."""
    for wire in (result_to_string(value), arguments_to_json(value)):
        decoded = json.loads(wire)
        if isinstance(value, tuple):
            assert isinstance(decoded, list) and len(decoded) == len(value)
        else:
            # 1 and "1" are two keys in Python, one in JSON.
            assert isinstance(decoded, dict) and len(decoded) <= len(value)
