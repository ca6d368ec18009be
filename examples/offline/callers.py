"""Callers for offline calls: a phone over Twilio media streams, and a WebRTC peer.

Each speaks espeak-ng lines into its microphone in real time (silence in between, as a
real line carries) and keeps what it hears, with the wall-clock time it arrived.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fractions
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .speech import rms, synthesize

FRAME_S = 0.02
LOUD = 300.0  # RMS of 16-bit audio above which a frame is speech, not line noise


class Caller:
    """The part both callers share: the microphone schedule and the ear."""

    def __init__(self, mic_rate: int, on_say: Callable[[str], None] | None = None) -> None:
        self.mic_rate = mic_rate
        self._on_say = on_say
        self.said: list[tuple[float, float, str]] = []  # (start, end) wall clock, text
        self.heard: list[tuple[float, bytes]] = []  # arrival wall clock, 16-bit mono PCM
        self.heard_rate = mic_rate
        self._mic = bytearray()
        self._last_loud = 0.0
        self._first_loud_after: list[float] = []

    # The microphone ------------------------------------------------------------------

    def next_mic_frame(self) -> bytes:
        """20 ms of what the caller says now: queued speech, else silence."""
        size = int(self.mic_rate * FRAME_S) * 2
        chunk = bytes(self._mic[:size])
        del self._mic[:size]
        return chunk + bytes(size - len(chunk))

    async def say(self, text: str) -> None:
        """Speak ``text`` and return when the last of it has gone out."""
        pcm = await synthesize(text, self.mic_rate)
        if self._on_say:
            self._on_say(text)
        start = time.time()
        self._mic.extend(pcm)
        while self._mic:
            await asyncio.sleep(FRAME_S)
        self.said.append((start, time.time(), text))

    # The ear -------------------------------------------------------------------------

    def hear(self, pcm: bytes) -> None:
        now = time.time()
        self.heard.append((now, pcm))
        if rms(pcm) > LOUD:
            self._last_loud = now

    async def wait_for_bot(self, *, quiet: float = 1.2, timeout: float = 60.0) -> None:
        """Wait until the bot has spoken since now and then been quiet for ``quiet`` s."""
        since = time.time()
        deadline = since + timeout
        while time.time() < deadline:
            if self._last_loud > since and time.time() - self._last_loud >= quiet:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"the bot did not speak and finish within {timeout} s")

    async def wait_for_bot_speech(self, seconds: float, *, timeout: float = 60.0) -> None:
        """Wait until ``seconds`` of loud bot audio have arrived since now."""
        since = time.time()
        deadline = since + timeout
        while time.time() < deadline:
            if self.heard_speech_after(since) >= seconds:
                return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"heard less than {seconds} s of the bot within {timeout} s")

    def heard_speech_after(self, since: float) -> float:
        """Seconds of loud audio heard after ``since`` (wall clock)."""
        loud = [pcm for t, pcm in self.heard if t > since and rms(pcm) > LOUD]
        return sum(len(pcm) for pcm in loud) / 2 / self.heard_rate

    def heard_since_bot_spoke(self, since: float) -> float:
        """Seconds of audio heard from the bot's first loud frame after ``since`` on."""
        after = [(t, pcm) for t, pcm in self.heard if t > since]
        first = next((i for i, (_, pcm) in enumerate(after) if rms(pcm) > LOUD), len(after))
        return sum(len(pcm) for _, pcm in after[first:]) / 2 / self.heard_rate

    def heard_pcm(self) -> bytes:
        return b"".join(pcm for _, pcm in self.heard)


class TwilioCaller(Caller):
    """Twilio's side of a media stream: ``connected``, ``start``, ``media``, ``stop``.

    Audio both ways is 8 kHz μ-law. A REST hang-up from the bot ends the stream.
    """

    def __init__(
        self,
        url: str,
        *,
        hangups: dict[str, asyncio.Event] | None = None,
        on_say: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(8000, on_say)
        self.url = url
        self.call_sid = "CA" + "0" * 31 + "1"
        self.stream_sid = "MZ" + "0" * 31 + "1"
        self.account_sid = "AC" + "0" * 31 + "1"
        self.cleared = 0  # "clear" messages: the bot dropping queued audio on a barge-in
        self.stopped = asyncio.Event()
        self._hangups = hangups if hangups is not None else {}
        self._ws: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._seq = 0

    async def dial(self) -> None:
        import websockets

        self._hangups.setdefault(self.call_sid, asyncio.Event())
        self._ws = await websockets.connect(self.url)
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self._send(
            {
                "event": "start",
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": {},
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
                "streamSid": self.stream_sid,
            }
        )
        self._tasks = [
            asyncio.create_task(self._pump()),
            asyncio.create_task(self._listen()),
            asyncio.create_task(self._watch_hangup()),
        ]

    async def hang_up(self) -> None:
        """The caller hangs up: ``stop``, then the socket closes (as Twilio does)."""
        await self._stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _stop(self) -> None:
        if not self.stopped.is_set():
            self.stopped.set()
            stop = {"accountSid": self.account_sid, "callSid": self.call_sid}
            with contextlib.suppress(Exception):
                await self._send({"event": "stop", "stop": stop, "streamSid": self.stream_sid})
        # Also when the bot ended the stream: our end of the socket is closed either way.
        with contextlib.suppress(Exception):
            await self._ws.close()

    async def _send(self, message: dict[str, Any]) -> None:
        self._seq += 1
        await self._ws.send(json.dumps({"sequenceNumber": str(self._seq), **message}))

    async def _pump(self) -> None:
        with contextlib.suppress(Exception):  # the bot closed the stream
            await self._pump_media()

    async def _pump_media(self) -> None:
        loop = asyncio.get_running_loop()
        start, n = loop.time(), 0
        while not self.stopped.is_set():
            payload = base64.b64encode(_ulaw(self.next_mic_frame())).decode()
            n += 1
            media = {
                "track": "inbound",
                "chunk": str(n),
                "timestamp": str(n * 20),
                "payload": payload,
            }
            await self._send({"event": "media", "media": media, "streamSid": self.stream_sid})
            await asyncio.sleep(max(0.0, start + n * FRAME_S - loop.time()))

    async def _listen(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self._ws:
                message = json.loads(raw)
                if message.get("event") == "media":
                    self.hear(_linear(base64.b64decode(message["media"]["payload"])))
                elif message.get("event") == "clear":
                    self.cleared += 1
        self.stopped.set()

    async def _watch_hangup(self) -> None:
        # The bot hung up through Twilio's REST API: Twilio ends the stream.
        await self._hangups[self.call_sid].wait()
        await self._stop()


class WebRTCCaller(Caller):
    """An aiortc peer: the microphone is an audio track, the bot's track is recorded."""

    def __init__(self, rate: int = 48000, on_say: Callable[[str], None] | None = None) -> None:
        super().__init__(rate, on_say)
        from aiortc import RTCPeerConnection

        self.pc = RTCPeerConnection()
        self.pc.addTrack(_MicTrack(self))
        self._reader: asyncio.Task[None] | None = None

        @self.pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "audio":
                self._reader = asyncio.ensure_future(self._read(track))

    async def offer(self) -> tuple[str, str]:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp, self.pc.localDescription.type

    async def answer(self, sdp: str, kind: str) -> None:
        from aiortc import RTCSessionDescription

        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))

    async def hang_up(self) -> None:
        await self.pc.close()
        if self._reader:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self, track: Any) -> None:
        with contextlib.suppress(Exception):
            while True:
                frame = await track.recv()
                samples = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]
                self.heard_rate = frame.sample_rate
                self.hear(samples.astype(np.int16).tobytes())


def _mic_track_class() -> type:
    from aiortc import MediaStreamTrack
    from av import AudioFrame

    class MicTrack(MediaStreamTrack):  # type: ignore[misc]
        kind = "audio"

        def __init__(self, caller: Caller) -> None:
            super().__init__()
            self._caller = caller
            self._start: float | None = None
            self._pts = 0

        async def recv(self) -> AudioFrame:
            loop = asyncio.get_running_loop()
            if self._start is None:
                self._start = loop.time()
            samples = int(self._caller.mic_rate * FRAME_S)
            due = self._start + self._pts / self._caller.mic_rate
            await asyncio.sleep(max(0.0, due - loop.time()))
            pcm = np.frombuffer(self._caller.next_mic_frame(), dtype=np.int16)
            frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = self._caller.mic_rate
            frame.pts = self._pts
            frame.time_base = fractions.Fraction(1, self._caller.mic_rate)
            self._pts += samples
            return frame

    return MicTrack


def _MicTrack(caller: Caller) -> Any:
    return _mic_track_class()(caller)


# G.711 μ-law, as Twilio carries it.
_BIAS, _CLIP = 0x84, 32635


def _ulaw(pcm: bytes) -> bytes:
    x = np.frombuffer(pcm, dtype=np.int16).astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    x = np.minimum(np.abs(x), _CLIP) + _BIAS
    exponent = np.floor(np.log2(x)).astype(np.int32) - 7
    mantissa = (x >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def _linear(ulaw: bytes) -> bytes:
    u = ~np.frombuffer(ulaw, dtype=np.uint8).astype(np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    magnitude = (((u & 0x0F) << 3) + _BIAS) << exponent
    x = np.where(u & 0x80, _BIAS - magnitude, magnitude - _BIAS)
    return x.astype(np.int16).tobytes()
