"""A minimal Roark receiver for the throughput bench: answers every request at once.

    python -m bench._receiver [--port 0]

HTTP/1.1 keep-alive on asyncio streams, in its own process: it reads each request whole
and answers 200 (a presign with an ``uploadUrl`` back to itself), validating nothing. It
stands in for a Roark that is not the bottleneck; the local Roark (strict validation,
SQLite) tops out well below what our delivery sends.
"""

from __future__ import annotations

import argparse
import asyncio
import json


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, base: str) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            path = lines[0].split(b" ")[1]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            body = b"{}"
            if path.endswith(b"/chunk-upload-url"):
                body = json.dumps({"uploadUrl": f"{base}/upload", "method": "PUT"}).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    holder: list[str] = []
    server = await asyncio.start_server(
        lambda r, w: _serve(r, w, holder[0]), "127.0.0.1", port, limit=1 << 20
    )
    bound = server.sockets[0].getsockname()[1]
    holder.append(f"http://127.0.0.1:{bound}")
    print(f"receiving on {holder[0]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m bench._receiver")
    ap.add_argument("--port", type=int, default=0)
    asyncio.run(main(ap.parse_args().port))
