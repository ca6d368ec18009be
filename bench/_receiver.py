"""A minimal Roark receiver for the throughput bench: answers every request at once.

    python -m bench._receiver [--port 0]

HTTP/1.1 keep-alive (pipelining too) on a raw asyncio protocol, in its own process: it
answers 200 to everything (a presign with an ``uploadUrl`` back to itself) and validates
nothing. It counts what arrived, so the bench confirms delivery by what the receiver got:
``GET /stats`` gives requests, distinct call-started / call-ended call ids, and repeats.
It stands in for a Roark that is not the bottleneck; the local Roark (strict validation,
SQLite) tops out well below what our delivery sends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from typing import Final

_EVENT: Final = re.compile(rb'"event"\s*:\s*"(call-started|call-ended)"')
_CALL_ID: Final = re.compile(rb'"pipecatCallId"\s*:\s*"([^"]*)"')
_LENGTH: Final = re.compile(rb"\r\ncontent-length\s*:\s*(\d+)", re.IGNORECASE)


class Counts:
    def __init__(self) -> None:
        self.requests = 0
        self.connections = 0
        self.seen: dict[bytes, set[bytes]] = {b"call-started": set(), b"call-ended": set()}
        self.repeats = 0

    def take(self, body: bytes) -> None:
        self.requests += 1
        event = _EVENT.search(body)
        call = _CALL_ID.search(body)
        if event is None or call is None:
            return
        ids = self.seen[event.group(1)]
        if call.group(1) in ids:
            self.repeats += 1
        ids.add(call.group(1))

    def json(self) -> bytes:
        return json.dumps(
            {
                "requests": self.requests,
                "connections": self.connections,
                "started": len(self.seen[b"call-started"]),
                "ended": len(self.seen[b"call-ended"]),
                "repeats": self.repeats,
            }
        ).encode()


class _Conn(asyncio.Protocol):
    def __init__(self, counts: Counts, presign: bytes) -> None:
        self._counts = counts
        self._presign = presign
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._counts.connections += 1

    def data_received(self, data: bytes) -> None:
        self._buf += data
        out = []
        while (end := self._buf.find(b"\r\n\r\n")) >= 0:
            head = bytes(self._buf[: end + 2])
            m = _LENGTH.search(head)
            length = int(m.group(1)) if m else 0
            if len(self._buf) < end + 4 + length:
                break
            body = bytes(self._buf[end + 4 : end + 4 + length])
            del self._buf[: end + 4 + length]
            path = head.split(b" ", 2)[1]
            reply = b"{}"
            if path.endswith(b"/chunk-upload-url"):
                reply = self._presign
            elif path == b"/stats":
                reply = self._counts.json()
            else:
                self._counts.take(body)
            out.append(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(reply), reply)
            )
        if out and self._transport is not None:
            self._transport.write(b"".join(out))


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    counts = Counts()
    presign: list[bytes] = []
    server = await loop.create_server(
        lambda: _Conn(counts, presign[0]), "127.0.0.1", port, backlog=1024
    )
    bound = server.sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{bound}"
    presign.append(json.dumps({"uploadUrl": f"{base}/upload", "method": "PUT"}).encode())
    print(f"receiving on {base}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m bench._receiver")
    ap.add_argument("--port", type=int, default=0)
    asyncio.run(main(ap.parse_args().port))
