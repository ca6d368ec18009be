"""Running examples/bot.py's ``bot()`` behind real transports, and reading calls back."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import os
import sys
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest

from examples.offline.callers import TwilioCaller, WebRTCCaller
from examples.offline.vendors import Vendors
from pipecat_roark_otel.devserver import LocalRoark

if TYPE_CHECKING:  # the server needs the bot extra: imported by the calls that use it
    from pipecat.runner.types import WebSocketRunnerArguments

    from examples.offline.serve import BotRuns

BOT = Path(__file__).resolve().parents[2] / "examples" / "bot.py"

# What callers say; one breath each: a pause inside a line would be a second VAD turn.
ORDER = "I'd like to check on my order."
BYE = "Great thanks bye."
PLANS = "Tell me about your plans."
JUST_ORDER = "Just my order please."


def load_bot() -> ModuleType:
    """examples/bot.py as a module, the file users copy."""
    if "example_bot" in sys.modules:
        return sys.modules["example_bot"]
    spec = importlib.util.spec_from_file_location("example_bot", BOT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["example_bot"] = module
    spec.loader.exec_module(module)
    return module


@contextlib.asynccontextmanager
async def phone_call(
    entry: Callable[[WebSocketRunnerArguments], Awaitable[None]], vendors: Vendors
) -> AsyncIterator[tuple[TwilioCaller, BotRuns]]:
    """``entry`` (``bot.bot`` or a variant) behind the phone server, a Twilio caller dialled in."""
    from examples.offline.serve import phone_server

    async with phone_server(entry) as (url, runs):
        caller = TwilioCaller(url, hangups=vendors.hangups, on_say=vendors.caller_says)
        await caller.dial()
        try:
            yield caller, runs
        finally:
            await caller.hang_up()


@contextlib.asynccontextmanager
async def webrtc_call(
    bot: ModuleType, vendors: Vendors
) -> AsyncIterator[tuple[WebRTCCaller, str, BotRuns]]:
    """``bot.bot`` answering an aiortc caller's offer: (caller, pc_id, runs)."""
    pytest.importorskip("aiortc", reason="the WebRTC caller needs aiortc: pip install -e '.[bot]'")
    from examples.offline.serve import webrtc_call as serve

    caller = WebRTCCaller(on_say=vendors.caller_says)
    async with serve(bot, caller) as (pc_id, runs):
        yield caller, pc_id, runs


async def read_call(roark: LocalRoark, *, timeout: float = 30.0) -> dict[str, Any]:
    """The one call the local Roark holds, read over HTTP once ``call-ended`` is in."""
    headers = {"authorization": f"Bearer {roark.api_key}"}
    async with httpx.AsyncClient(base_url=roark.base_url, headers=headers) as client:
        deadline = time.monotonic() + timeout
        while True:
            calls = (await client.get("/api/calls")).json()["data"]
            if calls and all(c["status"] == "ended" for c in calls):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no ended call after {timeout} s: {calls}")
            await asyncio.sleep(0.1)
        assert len(calls) == 1, calls
        path = f"/api/calls/{quote(calls[0]['pipecatCallId'], safe='')}"
        call: dict[str, Any] = (await client.get(path)).json()["data"]
        wav = await client.get(f"{path}/recording.wav")
        call["wav"] = wav.content if wav.status_code == 200 else None
    return call


@dataclass
class Recording:
    rate: int
    channels: int
    user: np.ndarray
    bot: np.ndarray

    @classmethod
    def parse(cls, wav: bytes) -> Recording:
        with wave.open(io.BytesIO(wav)) as w:
            rate, channels = w.getframerate(), w.getnchannels()
            samples = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        stereo = samples.reshape(-1, channels).astype(np.float64)
        return cls(rate, channels, stereo[:, 0], stereo[:, 1])

    def energy(self, track: np.ndarray, start_ms: float, end_ms: float) -> float:
        """RMS of ``track`` between two offsets."""
        a, b = int(start_ms * self.rate / 1000), int(end_ms * self.rate / 1000)
        window = track[max(0, a) : max(0, b)]
        return float(np.sqrt(np.mean(window**2))) if window.size else 0.0

    def loud_spans(self, track: np.ndarray, *, level: float = 30.0) -> list[tuple[int, int]]:
        """(start, end) ms of stretches above ``level`` RMS in 20 ms windows, gaps < 300 ms."""
        step = self.rate // 50
        n = track.size // step
        rms = np.sqrt(np.mean(track[: n * step].reshape(n, step) ** 2, axis=1))
        spans: list[tuple[int, int]] = []
        for i in np.flatnonzero(rms > level):
            start, end = int(i) * 20, int(i) * 20 + 20
            if spans and start - spans[-1][1] < 300:
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((start, end))
        return spans


def iso(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


# Where Pipecat's Silero VAD puts speech edges against the audio's energy: its confidence and
# smoothed volume rise late on a soft onset ("Gr...") and decay slowly after the last word
# (measured: up to ~490 ms), and a starved loop can split one utterance in two.
USER_EDGE_MS = 500
# The bot's edges come from the audio it played: the end within 100 ms; the first audio
# lands after BotStartedSpeakingFrame by however long the event loop took to write it.
BOT_EDGE_MS = 100
BOT_START_LAG_MS = 400


def exchanges(transcript: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(caller lines, the bot's reply before, between and after them).

    A reply whose playback stalls (an audio gap on a loaded machine) is two assistant turns
    in Pipecat's own terms; joined here, so the words can be compared whole.
    """
    users = [i for i, t in enumerate(transcript) if t["role"] == "user"]
    replies = [
        " ".join(t["content"] for t in transcript[a + 1 : b] if t["role"] == "assistant")
        for a, b in zip([-1, *users], [*users, len(transcript)], strict=True)
    ]
    return [transcript[i]["content"] for i in users], replies


def load_slack_ms() -> int:
    """Extra timing tolerance on an oversubscribed machine, where real-time audio stalls.

    These calls run in real time in one process; with several runnable processes per core
    the event loop falls behind the audio clock by whole seconds. Content is asserted
    exactly either way; edge timing to the numbers above only where the machine keeps up.
    """
    per_core = os.getloadavg()[0] / (os.cpu_count() or 1)
    return 0 if per_core <= 2.0 else 1500


def assert_audio_matches_turns(rec: Recording, transcript: list[dict[str, Any]]) -> None:
    """Each turn's own channel carries speech where the turn says, and its edges match."""
    slack = load_slack_ms()
    for turn in transcript:
        start, end = turn["audioOffsetMs"], turn["endAudioOffsetMs"]
        user = turn["role"] == "user"
        track = rec.user if user else rec.bot
        spans = [s for s in rec.loud_spans(track) if s[1] > start and s[0] < end]
        assert spans, f"no {turn['role']} audio in [{start}, {end}] ms: {turn}"
        speech_start, speech_end = spans[0][0], spans[-1][1]
        if user:
            # The VAD said the caller spoke only where they did.
            assert speech_start - USER_EDGE_MS - slack <= start, (spans, turn)
            assert end <= speech_end + USER_EDGE_MS + slack, (spans, turn)
        else:
            lag = speech_start - start
            assert -BOT_EDGE_MS - slack <= lag <= BOT_START_LAG_MS + slack, (spans, turn)
            assert abs(speech_end - end) <= BOT_EDGE_MS + slack, (spans, turn)
        quiet = rec.energy(track, speech_end + USER_EDGE_MS, speech_end + 1000)
        assert rec.energy(track, start, end) > 4 * quiet + 50, turn


def assert_user_turns_at_speech(caller: Any, transcript: list[dict[str, Any]]) -> None:
    """User turns are stamped at the VAD's onset: as the caller spoke, not when STT answered."""
    users = [t for t in transcript if t["role"] == "user"]
    assert len(users) == len(caller.said)
    for turn, (began, ended, _text) in zip(users, caller.said, strict=True):
        onset = iso(turn["timestamp"])
        # While the caller was still speaking: no STT final existed yet.
        assert began - USER_EDGE_MS / 1000 <= onset < ended, (turn, began, ended)
        assert iso(turn["endTimestamp"]) > onset, turn


def assert_only_heard_words(
    vendors: Any, content: str, full: str, *, heard_s: float, played_s: float
) -> None:
    """A cut reply holds the words whose audio went out, and none after.

    ``heard_s``: audio the caller had received; ``played_s``: what the bot had sent by the
    cut. The words are those starting within them, give or take one.
    """
    words, every = content.split(), full.split()
    assert 0 < len(words) < len(every), content
    assert words == every[: len(words)], content
    fewest = vendors.words_spoken_by(full, heard_s) - 1
    most = vendors.words_spoken_by(full, played_s) + 1
    assert fewest <= len(words) <= most, (content, fewest, most)
