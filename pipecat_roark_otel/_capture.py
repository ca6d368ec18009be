"""Pure turn and tool-call assembly: frame facts in, call records out.

No Pipecat, OTel or I/O here. Every instant is unix nanoseconds, taken from the
frame's push timestamp so observer-queue lag never skews a turn. "Capture rule N"
cites docs/CAPTURE_RULES.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from ._tool_values import arguments_to_json, result_to_string

Role = Literal["user", "assistant"]
Service = Literal["stt", "llm", "tts"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso_from_ns(unix_ns: int) -> str:
    """ISO 8601 UTC as the reference observer writes it (``datetime.isoformat``)."""
    return (_EPOCH + timedelta(microseconds=unix_ns // 1000)).isoformat()


def join_chunks(parts: list[tuple[str, bool]]) -> str:
    """Capture rule 9: pre-spaced deltas concatenate as-is, other chunks get one space."""
    result = ""
    previous_spaced = False
    for text, spaced in parts:
        if not text:
            continue
        if (
            result
            and not (spaced and previous_spaced)
            and not result[-1].isspace()
            and not text[0].isspace()
        ):
            result += " "
        result += text
        previous_spaced = spaced
    return result


@dataclass(frozen=True, slots=True)
class Turn:
    seq: int
    role: Role
    content: str
    onset_ns: int
    timestamp: str
    end_timestamp: str
    audio_offset_ms: int | None
    end_audio_offset_ms: int | None
    user_id: str | None = None
    language: str | None = None
    interrupted: bool = False
    latency_ms: int | None = None
    # The reply's latency breakdown, from Pipecat's metrics frames (assistant turns).
    stt_ttfb_ms: int | None = None
    llm_ttfb_ms: int | None = None
    tts_ttfb_ms: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    seq: int
    tool_call_id: str
    name: str
    arguments: str
    at_ns: int
    audio_offset_ms: int | None


@dataclass(frozen=True, slots=True)
class ToolResult:
    seq: int
    tool_call_id: str
    content: str
    at_ns: int
    audio_offset_ms: int | None
    # The handler raised; ``content`` is then Pipecat's stand-in for the LLM to read.
    failed: bool = False
    # An async tool's progress update (``is_final=False``): the tool is still running.
    final: bool = True
    # False for the final result after a progress update: Roark already has this
    # call's result (one id, one result); only the tool span ends with it.
    reported: bool = True


Record = Turn | ToolCall | ToolResult

Redactor = Callable[[str], str]


def redacted(record: Record, redact: Redactor) -> Record:
    """The record with its content passed through the user's redaction hook."""
    if isinstance(record, Turn):
        return replace(record, content=redact(record.content))
    if isinstance(record, ToolCall):
        return replace(record, arguments=redact(record.arguments))
    return replace(record, content=redact(record.content))


@dataclass(slots=True)
class _Edge:
    """A speech edge: when, and the ISO form written for it."""

    ns: int
    iso: str


def _edge(ns: int) -> _Edge:
    return _Edge(ns, iso_from_ns(ns))


@dataclass(slots=True)
class _UserTurn:
    parts: list[tuple[str, bool]] = field(default_factory=list)
    started: _Edge | None = None
    stopped: _Edge | None = None
    # The VAD's last speech offset in this turn; None while the caller is speaking.
    speech_stopped: _Edge | None = None
    # Opened by a transcript of VAD speech before Pipecat started the user turn.
    early: bool = False
    user_id: str | None = None
    language: str | None = None


@dataclass(slots=True)
class _BotTurn:
    played: list[tuple[str, bool]] = field(default_factory=list)
    generated: list[tuple[str, bool]] = field(default_factory=list)
    text_started: _Edge | None = None
    started: _Edge | None = None
    stopped: _Edge | None = None
    # TTS contexts of the words heard: a late word of one of them is still this reply's.
    contexts: set[str] = field(default_factory=set)
    interrupted: bool = False
    # Metrics that arrived since the previous reply closed belong to this one.
    ttfb_ms: dict[Service, int] = field(default_factory=dict)
    input_tokens: int | None = None
    output_tokens: int | None = None


def _late_word_of(held: _BotTurn, context: str | None) -> bool:
    """A word played after ``held`` ended is its own when its TTS context says so; after an
    interruption, any word but another context's (nothing new plays before it is handled)."""
    if context is not None and context in held.contexts:
        return True
    return held.interrupted and (context is None or not held.contexts)


class CallCapture:
    """Turns, tool calls and results of one call, in the order they close."""

    def __init__(self) -> None:
        # Sample 0 on the wall clock, or (better) the recorder's own timeline.
        self.anchor_ns: int | None = None
        self.position_ms: Callable[[int, Role], float | None] | None = None
        self.has_output_transport = False
        # (onset, role) of the earliest turn: who spoke first, whatever order turns close in.
        self._first: tuple[int, Role] | None = None
        self._seq = 0
        self._user = _UserTurn()
        self._bot = _BotTurn()
        # A reply that ended, still open to words played before its end reached the
        # transport: Pipecat releases a word's text on its own clock, which on a starved
        # loop lags the TTSStoppedFrame; and an interruption is broadcast upstream of the
        # transport, which plays on until it gets there.
        self._held: _BotTurn | None = None
        self._bot_speaking = False
        self._generated_ids: set[int] = set()
        self._played_ids: set[int] = set()
        self._tool_call_ids: set[str] = set()
        self._tool_result_ids: set[str] = set()
        self._tool_progress: set[str] = set()
        self._last_user_stop_ns: int | None = None
        # VAD speech (onset, offset) not yet part of a user turn.
        self._speech: tuple[_Edge, _Edge | None] | None = None

    # -- timing ---------------------------------------------------------------

    def offset_ms(self, ns: int | None, track: Role = "assistant") -> int | None:
        """Capture rule 13: milliseconds from recording sample 0; None before any audio."""
        if ns is None:
            return None
        if self.position_ms is not None:
            position = self.position_ms(ns, track)
            return None if position is None else max(0, round(position))
        if self.anchor_ns is None:
            return None
        return max(0, round((ns - self.anchor_ns) / 1_000_000))

    @property
    def first_speaker(self) -> Role | None:
        return self._first[1] if self._first else None

    def _spoke(self, role: Role, onset_ns: int) -> None:
        if self._first is None or onset_ns < self._first[0]:
            self._first = (onset_ns, role)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # -- user -----------------------------------------------------------------

    def speech_started(self, now: int, lead_ns: int) -> None:
        """Capture rule 6: the VAD confirms speech ``lead_ns`` after it began."""
        user = self._user
        if user.started is not None and user.stopped is None:
            user.speech_stopped = None  # the caller speaks on within the open turn
        else:
            self._speech = (_edge(now - lead_ns), None)

    def speech_stopped(self, now: int, lag_ns: int) -> None:
        """Capture rule 6: the VAD confirms silence ``lag_ns`` after speech ended."""
        offset = _edge(now - lag_ns)
        user = self._user
        if user.started is not None and user.stopped is None:
            if offset.ns >= user.started.ns:
                user.speech_stopped = offset
        elif self._speech is not None:
            self._speech = (self._speech[0], offset)

    def user_started(self, now: int) -> list[Record]:
        if self._user.early:
            # Its transcript came first; this is the same speech's turn starting.
            self._user.early = False
            return []
        out = self._release(interrupted=False) + self._reply_ends_at_user_turn(now)
        out += self.flush_user(now)
        # Pipecat's user turn starts when its turn strategy decides; speech began earlier.
        onset, offset = self._speech or (_edge(now), None)
        self._speech = None
        self._user.started = onset
        self._user.speech_stopped = offset
        self._user.stopped = None
        bot = self._bot
        if not (bot.played if self.has_output_transport else bot.generated):
            # Capture rule 8: a bot edge with no words heard is stale by now.
            bot.started = bot.stopped = None
        return out

    def _reply_ends_at_user_turn(self, now: int) -> list[Record]:
        """Capture rule 8: with no output transport, the next user turn closes the reply."""
        if self.has_output_transport or not self._bot.generated:
            return []
        return self.flush_assistant(now)

    def user_stopped(self, now: int) -> None:
        # The turn ends when turn detection decides; the speech ended at the VAD's offset.
        self._user.stopped = self._user.speech_stopped or _edge(now)

    def transcription(
        self,
        text: str,
        spaced: bool,
        now: int,
        *,
        frame_timestamp: object = None,
        user_id: object = None,
        language: object = None,
    ) -> list[Record]:
        """Capture rule 4: every final counts, whatever ``finalized`` says."""
        if not isinstance(text, str) or not text.strip():
            return []
        out = self._release(interrupted=False)
        user = self._user
        if not user.parts and user.started is None:
            out += self._reply_ends_at_user_turn(now)
            # Capture rule 6: no onset frame, so the VAD's, else the frame's time, else now.
            if self._speech is not None:
                (user.started, user.speech_stopped), self._speech = self._speech, None
                user.early = True
            elif isinstance(frame_timestamp, str) and frame_timestamp:
                user.started = _Edge(now, frame_timestamp)
            else:
                user.started = _edge(now)
        user.parts.append((text if spaced else text.strip(), spaced))
        if isinstance(user_id, str) and user_id:
            user.user_id = user_id
        if language is not None:
            user.language = str(getattr(language, "value", language))
        return out

    def flush_user(self, now: int) -> list[Record]:
        """Capture rule 5: close the pending user turn at a turn boundary."""
        user = self._user
        if not user.parts:
            return []
        self._user = _UserTurn()
        content = join_chunks(user.parts).strip()
        if not content:
            return []
        stopped = user.stopped or _edge(now)
        self._last_user_stop_ns = stopped.ns
        return [
            self._turn(
                "user",
                content,
                user.started or _edge(now),
                stopped,
                user_id=user.user_id,
                language=user.language,
            )
        ]

    def _turn(self, role: Role, content: str, started: _Edge, stopped: _Edge, **extra: Any) -> Turn:
        """Capture rule 6: a turn runs from its speech onset to its offset."""
        self._spoke(role, started.ns)
        return Turn(
            seq=self._next_seq(),
            role=role,
            content=content,
            onset_ns=started.ns,
            timestamp=started.iso,
            end_timestamp=stopped.iso,
            audio_offset_ms=self.offset_ms(started.ns, role),
            end_audio_offset_ms=self.offset_ms(stopped.ns, role),
            **extra,
        )

    # -- assistant ------------------------------------------------------------

    def bot_started(self, now: int) -> list[Record]:
        self._bot_speaking = True
        out = self._release() + self.flush_user(now)
        self._bot.started = _edge(now)
        return out

    def tts_text(
        self,
        frame_id: int,
        text: str,
        spaced: bool,
        now: int,
        *,
        played: bool,
        context_id: object = None,
    ) -> list[Record]:
        """Capture rule 7: words the output transport released are the words heard."""
        seen = self._played_ids if played else self._generated_ids
        if frame_id in seen:
            return []
        seen.add(frame_id)
        if not isinstance(text, str) or not text:
            return []
        context = context_id if isinstance(context_id, str) and context_id else None
        held = self._held
        if played and held is not None and _late_word_of(held, context):
            held.played.append((text, spaced))
            return []
        out: list[Record] = []
        bot = self._bot
        if played or not self.has_output_transport:
            out = self._release()
        if (played and not bot.played) or (not bot.played and not bot.generated):
            bot.text_started = _edge(now)
            if not self.has_output_transport or (played and self._bot_speaking and not bot.started):
                # Capture rule 5: the reply starting ends the caller's turn. With speaking
                # frames BotStartedSpeaking does, but none comes while the transport still
                # counts the bot as speaking from a start no word followed.
                out += self.flush_user(now)
        (bot.played if played else bot.generated).append((text, spaced))
        if context is not None and (played or not self.has_output_transport):
            bot.contexts.add(context)
        return out

    def bot_stopped(self, now: int, *, interrupted: bool = False) -> list[Record]:
        """Capture rule 8: the turn ends at BotStoppedSpeaking or the interruption."""
        self._bot_speaking = False
        bot, self._bot = self._bot, _BotTurn()
        bot.stopped = _edge(now)
        if bot.played and self.has_output_transport and (interrupted or bot.contexts):
            out = self._release()
            bot.interrupted = interrupted
            self._held = bot
            return out
        # The transport's own stop after an interruption: the cut reply waits for it to
        # reach the processor after the transport (interruption_played).
        out = self._release(interrupted=interrupted)
        return out + self._close_reply(bot, now, interrupted=interrupted)

    def interruption_played(self) -> list[Record]:
        """The interruption got past the output transport: no word of the cut reply is left."""
        return self._release()

    def flush_assistant(self, now: int, *, interrupted: bool = False) -> list[Record]:
        bot, self._bot = self._bot, _BotTurn()
        return self._release() + self._close_reply(bot, now, interrupted=interrupted)

    def _release(self, *, interrupted: bool = True) -> list[Record]:
        """The held reply, closed where its audio ended; a cut one only if ``interrupted``."""
        held = self._held
        if held is None or (held.interrupted and not interrupted):
            return []
        self._held = None
        stopped = held.stopped
        assert stopped is not None  # bot_stopped holds a reply only once it has stopped
        return self._close_reply(held, stopped.ns, interrupted=held.interrupted)

    def _close_reply(self, bot: _BotTurn, now: int, *, interrupted: bool) -> list[Record]:
        parts = bot.played if self.has_output_transport else bot.generated
        # A turn with no words heard leaves nothing, its timing included.
        if not parts:
            return []
        content = join_chunks(parts).strip()
        if not content:
            return []
        started = bot.started or bot.text_started or _edge(now)
        latency_ms = None
        if self._last_user_stop_ns is not None and started.ns >= self._last_user_stop_ns:
            latency_ms = round((started.ns - self._last_user_stop_ns) / 1_000_000)
        self._last_user_stop_ns = None
        return [
            self._turn(
                "assistant",
                content,
                started,
                bot.stopped or _edge(now),
                interrupted=interrupted,
                latency_ms=latency_ms,
                stt_ttfb_ms=bot.ttfb_ms.get("stt"),
                llm_ttfb_ms=bot.ttfb_ms.get("llm"),
                tts_ttfb_ms=bot.ttfb_ms.get("tts"),
                input_tokens=bot.input_tokens,
                output_tokens=bot.output_tokens,
            )
        ]

    # -- latency breakdown ----------------------------------------------------

    def service_ttfb(self, service: Service, seconds: float) -> None:
        """A service's time to first byte; the first per reply is the one the caller waited on."""
        if seconds > 0 and service not in self._bot.ttfb_ms:
            self._bot.ttfb_ms[service] = round(seconds * 1000)

    def llm_usage(self, input_tokens: int, output_tokens: int) -> None:
        """Tokens of every LLM request behind the reply (a tool call makes two)."""
        bot = self._bot
        bot.input_tokens = (bot.input_tokens or 0) + max(0, input_tokens)
        bot.output_tokens = (bot.output_tokens or 0) + max(0, output_tokens)

    # -- tools ----------------------------------------------------------------

    def tool_call(
        self, tool_call_id: object, name: object, arguments: object, now: int
    ) -> list[Record]:
        """Capture rules 2 and 10: one tool-call id is one invocation."""
        call_id = str(tool_call_id or "")
        if call_id:
            if call_id in self._tool_call_ids:
                return []
            self._tool_call_ids.add(call_id)
        return [
            *self._release(),
            ToolCall(
                seq=self._next_seq(),
                tool_call_id=call_id,
                name=str(name or ""),
                arguments=arguments_to_json(arguments),
                at_ns=now,
                audio_offset_ms=self.offset_ms(now),
            ),
        ]

    def tool_result(
        self,
        tool_call_id: object,
        result: object,
        now: int,
        *,
        failed: bool = False,
        final: bool = True,
    ) -> list[Record]:
        call_id = str(tool_call_id or "")
        reported = True
        if call_id:
            if call_id in self._tool_result_ids:
                if not (final and call_id in self._tool_progress):
                    return []
                reported = False
            self._tool_result_ids.add(call_id)
            if final:
                self._tool_progress.discard(call_id)
            else:
                self._tool_progress.add(call_id)
        return [
            *self._release(),
            ToolResult(
                seq=self._next_seq() if reported else 0,
                tool_call_id=call_id,
                content=result_to_string(result),
                at_ns=now,
                audio_offset_ms=self.offset_ms(now),
                failed=failed,
                final=final,
                reported=reported,
            ),
        ]

    # -- end ------------------------------------------------------------------

    def flush_all(self, now: int) -> list[Record]:
        return self._release() + self.flush_user(now) + self.flush_assistant(now)
