"""Hosting ``bot()`` the way Pipecat's runner does: a websocket for phone media streams,
an offer/answer for WebRTC."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, WebSocket
from pipecat.runner.types import WebSocketRunnerArguments


@dataclass
class BotRuns:
    """What happened to each ``bot()`` the server started."""

    finished: int = 0
    errors: list[BaseException] = field(default_factory=list)

    async def wait_finished(self, n: int = 1, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.finished < n:
            assert not self.errors, self.errors
            if time.monotonic() > deadline:
                raise TimeoutError(f"bot() still running after {timeout} s")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def phone_server(
    entry: Callable[[WebSocketRunnerArguments], Awaitable[None]],
) -> AsyncIterator[tuple[str, BotRuns]]:
    """A FastAPI websocket endpoint handing each Twilio media stream to ``entry``.

    The same shape as Pipecat's development runner: accept, then
    ``bot(WebSocketRunnerArguments(websocket=...))``.
    """
    runs = BotRuns()
    app = FastAPI()

    @app.websocket("/ws")
    async def media_stream(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            await entry(WebSocketRunnerArguments(websocket=websocket))
        except BaseException as exc:
            runs.errors.append(exc)
            raise
        finally:
            runs.finished += 1

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not serving.done(), serving
        await asyncio.sleep(0.01)
    try:
        yield f"ws://127.0.0.1:{port}/ws", runs
    finally:
        server.should_exit = True
        await serving
        sock.close()


@contextlib.asynccontextmanager
async def webrtc_call(bot: Any, caller: Any) -> AsyncIterator[tuple[str, BotRuns]]:
    """What Pipecat's runner does on ``POST /api/offer``: answer the caller's offer with a
    SmallWebRTCConnection, then run ``bot(SmallWebRTCRunnerArguments(...))``."""
    from pipecat.runner.types import SmallWebRTCRunnerArguments
    from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection

    runs = BotRuns()
    sdp, kind = await caller.offer()
    connection = SmallWebRTCConnection()
    await connection.initialize(sdp=sdp, type=kind)
    answer = connection.get_answer()
    await caller.answer(answer["sdp"], answer["type"])

    async def run() -> None:
        try:
            await bot.bot(SmallWebRTCRunnerArguments(webrtc_connection=connection))
        except BaseException as exc:
            runs.errors.append(exc)
            raise
        finally:
            runs.finished += 1

    running = asyncio.create_task(run())
    try:
        yield connection.pc_id, runs
    finally:
        await caller.hang_up()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(running, 30)
        await connection.disconnect()
