"""Deepgram, OpenAI and Cartesia as protocol-level stand-ins on one loopback port.

Pipecat's own service classes talk to them through their own URL settings:

- Deepgram live transcription (``DeepgramSTTService(base_url=...)``): a websocket at
  ``/v1/listen`` taking linear16 audio; each ``Finalize`` (Pipecat sends one when the VAD
  says the caller stopped) is answered with a final ``Results`` message holding the line
  the caller started saying since the last one (``caller_says``), or nothing.
- OpenAI chat completions (``OpenAILLMService(base_url=...)``): ``POST /v1/chat/completions``
  streamed as server-sent events, text and tool calls, chosen by ``Agent`` from the
  conversation so far.
- Cartesia TTS (``CartesiaTTSService(url=...)``): a websocket at ``/tts/websocket``; each
  transcript is spoken by espeak-ng and sent as base64 PCM chunks with word timestamps,
  ``done`` once the context is flushed; ``cancel`` drops what is still queued.
- Twilio's REST API, the one call the bot makes (``TwilioFrameSerializer(base_url=...)``):
  completing a call ends its media stream (see ``callers.TwilioCaller``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .speech import synthesize

BOT_VOICE = "en-us+f3"


@dataclass
class Reply:
    """One chat completion: spoken text and/or tool calls (name, arguments)."""

    text: str = ""
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


class Agent:
    """The support agent's script: the reply follows from the last message."""

    GREETING = "Hello! Thanks for calling Copperline Care. How can I help?"
    ORDER_STATUS = "Your order shipped yesterday and arrives tomorrow."
    GOODBYE = "You're welcome. Goodbye!"
    LONG = (
        "We have three plans. The basic plan covers one device and costs ten dollars a month. "
        "The family plan covers five devices and costs twenty dollars a month. "
        "The business plan covers fifty devices and costs one hundred dollars a month."
    )
    SORRY = "Sorry, could you say that again?"

    def reply(self, messages: list[dict[str, Any]]) -> Reply:
        last = messages[-1]
        if last["role"] == "tool":
            return Reply(text=self.ORDER_STATUS)
        said = _text(last).lower()
        if "say hello" in said:
            return Reply(text=self.GREETING)
        if "bye" in said:
            return Reply(text=self.GOODBYE, tool_calls=[("end_call", {})])
        if "order" in said:
            return Reply(tool_calls=[("lookup_order", {"order_id": "A-1042"})])
        if "plans" in said:
            return Reply(text=self.LONG)
        return Reply(text=self.SORRY)


def _text(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


class Vendors:
    """The stand-ins on ``127.0.0.1``; use as ``async with Vendors() as v``."""

    def __init__(self, agent: Agent | None = None) -> None:
        self.caller_lines: list[str] = []  # said, not yet transcribed
        self.agent = agent or Agent()
        self.chat_requests: list[dict[str, Any]] = []
        self.tts_texts: list[str] = []
        self.word_times: dict[str, list[tuple[str, float]]] = {}  # context -> (word, start s)
        self.stt_finals: list[str] = []
        self.hangups: dict[str, asyncio.Event] = {}  # Twilio call sid -> completed
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def caller_says(self, line: str) -> None:
        """The caller starts saying ``line``: the transcript of its next utterance."""
        self.caller_lines.append(line)

    @property
    def deepgram_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def cartesia_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/tts/websocket"

    @property
    def twilio_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def words_spoken_by(self, text: str, seconds: float) -> int:
        """How many words of the reply starting with ``text`` begin within ``seconds``."""
        for words in self.word_times.values():
            if " ".join(w for w, _ in words).startswith(text.split(".")[0]):
                return sum(1 for _, start in words if start < seconds)
        raise LookupError(f"no reply starting {text!r} was spoken")

    def env(self) -> dict[str, str]:
        """The environment examples/bot.py reads to use these stand-ins."""
        return {
            "DEEPGRAM_API_KEY": "offline",
            "OPENAI_API_KEY": "offline",
            "CARTESIA_API_KEY": "offline",
            "DEEPGRAM_BASE_URL": self.deepgram_url,
            "OPENAI_BASE_URL": self.openai_url,
            "CARTESIA_TTS_URL": self.cartesia_url,
            "TWILIO_ACCOUNT_SID": "AC" + "0" * 31 + "1",
            "TWILIO_AUTH_TOKEN": "offline",
            "TWILIO_API_BASE_URL": self.twilio_url,
        }

    async def __aenter__(self) -> Vendors:
        app = web.Application()
        app.router.add_get("/v1/listen", self._deepgram)
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_get("/tts/websocket", self._cartesia)
        app.router.add_post("/2010-04-01/Accounts/{account}/Calls/{call}.json", self._twilio)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._runner:
            await self._runner.cleanup()

    # Twilio ---------------------------------------------------------------------------

    async def _twilio(self, request: web.Request) -> web.Response:
        form = await request.post()
        call = request.match_info["call"]
        if form.get("Status") == "completed":
            self.hangups.setdefault(call, asyncio.Event()).set()
        return web.json_response({"sid": call, "status": "completed"})

    # Deepgram -------------------------------------------------------------------------

    async def _deepgram(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        rate = int(request.query.get("sample_rate", "16000"))
        received = 0
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                received += len(msg.data)
            elif msg.type == WSMsgType.TEXT:
                kind = json.loads(msg.data).get("type")
                if kind == "Finalize":
                    line = self.caller_lines.pop(0) if self.caller_lines else ""
                    self.stt_finals.append(line)
                    await ws.send_str(_deepgram_results(line, received / 2 / rate))
                elif kind == "CloseStream":
                    break
        await ws.close()
        return ws

    # OpenAI ---------------------------------------------------------------------------

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.chat_requests.append(body)
        reply = self.agent.reply(body["messages"])
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        async for chunk in self._completion_chunks(body.get("model", "gpt-4.1"), reply):
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _completion_chunks(self, model: str, reply: Reply) -> AsyncIterator[dict[str, Any]]:
        base = {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        yield chunk({"role": "assistant", "content": ""})
        for word in _pieces(reply.text):
            yield chunk({"content": word})
        for index, (name, arguments) in enumerate(reply.tool_calls):
            call_id = f"call_{next(self._ids)}"
            head = {"index": index, "id": call_id, "type": "function"}
            yield chunk({"tool_calls": [{**head, "function": {"name": name, "arguments": ""}}]})
            yield chunk(
                {"tool_calls": [{"index": index, "function": {"arguments": json.dumps(arguments)}}]}
            )
        yield chunk({}, "tool_calls" if reply.tool_calls else "stop")
        usage = {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70}
        yield {**base, "choices": [], "usage": usage}

    # Cartesia -------------------------------------------------------------------------

    async def _cartesia(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        # Each transcript starts synthesizing as it arrives and is sent in order, so one
        # reply's sentences play back to back, as Cartesia streams them.
        work: asyncio.Queue[tuple[dict[str, Any], asyncio.Task[bytes] | None]] = asyncio.Queue()
        cancelled: set[str] = set()
        speaker = asyncio.create_task(self._speak(ws, work, cancelled))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                message = json.loads(msg.data)
                if message.get("cancel"):
                    cancelled.add(message["context_id"])
                else:
                    text = message.get("transcript", "").strip()
                    rate = int(message["output_format"]["sample_rate"])
                    speech = (
                        asyncio.create_task(synthesize(text, rate, voice=BOT_VOICE))
                        if text
                        else None
                    )
                    await work.put((message, speech))
        finally:
            speaker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await speaker
        return ws

    async def _speak(
        self,
        ws: web.WebSocketResponse,
        work: asyncio.Queue[tuple[dict[str, Any], asyncio.Task[bytes] | None]],
        cancelled: set[str],
    ) -> None:
        played: dict[str, float] = {}  # context id -> seconds of audio sent so far
        while True:
            message, speech = await work.get()
            context = message["context_id"]
            if context in cancelled or ws.closed:
                continue
            rate = int(message["output_format"]["sample_rate"])
            text = message.get("transcript", "").strip()
            if speech is not None:
                self.tts_texts.append(text)
                pcm = await speech
                start = played.get(context, 0.0)
                words, starts, ends = _word_times(text, len(pcm) / 2 / rate, start)
                self.word_times.setdefault(context, []).extend(zip(words, starts, strict=True))
                await ws.send_json(
                    {
                        "type": "timestamps",
                        "context_id": context,
                        "status_code": 206,
                        "done": False,
                        "word_timestamps": {"words": words, "start": starts, "end": ends},
                    }
                )
                step = rate // 10 * 2  # 100 ms of 16-bit audio
                for i in range(0, len(pcm), step):
                    if context in cancelled:
                        break
                    await ws.send_json(
                        {
                            "type": "chunk",
                            "context_id": context,
                            "status_code": 206,
                            "done": False,
                            "data": base64.b64encode(pcm[i : i + step]).decode(),
                        }
                    )
                played[context] = start + len(pcm) / 2 / rate
            if not message.get("continue", True) and context not in cancelled:
                await ws.send_json(
                    {"type": "done", "context_id": context, "status_code": 206, "done": True}
                )


def _pieces(text: str) -> list[str]:
    """Text as an LLM streams it: word by word, spaces kept."""
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words) if w or i == 0]


def _word_times(
    text: str, duration: float, offset: float
) -> tuple[list[str], list[float], list[float]]:
    """Words spread over the audio in proportion to their length."""
    words = text.split()
    total = sum(len(w) + 1 for w in words)
    starts, ends, at = [], [], offset
    for word in words:
        span = duration * (len(word) + 1) / total
        starts.append(round(at, 3))
        ends.append(round(at + span, 3))
        at += span
    return words, starts, ends


def _deepgram_results(transcript: str, audio_seconds: float) -> str:
    words = [
        {"word": w.strip(".,!?").lower(), "start": 0.0, "end": 0.0, "confidence": 0.99}
        for w in transcript.split()
    ]
    return json.dumps(
        {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": 1.0,
            "start": max(0.0, audio_seconds - 1.0),
            "is_final": True,
            "speech_final": True,
            "from_finalize": True,
            "channel": {
                "alternatives": [{"transcript": transcript, "confidence": 0.99, "words": words}]
            },
            "metadata": {
                "request_id": "offline",
                "model_info": {"name": "nova-3", "version": "offline", "arch": "offline"},
                "model_uuid": "offline",
            },
        }
    )
