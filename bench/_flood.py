"""A receiver's own ceiling: prebuilt requests, pipelined on raw keep-alive sockets.

    python -m bench._flood --file REQUESTS --part I --parts K [--window 32]

Far cheaper per request than any HTTP client library (no parsing beyond the status line
and content-length), and run as several processes, so the receiver is what is measured.
The requests file is a pickled list of calls, each a list of whole HTTP/1.1 requests (in
order); this process takes every K-th call from I, waits for a line on stdin, sends their
requests ``window`` at a time on one connection and prints ``{"start", "end", "ok",
"sent"}`` (wall-clock seconds) as JSON.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import socket
import sys
import time
from typing import Final
from urllib.parse import urlsplit

_LENGTH: Final = re.compile(rb"\r\ncontent-length\s*:\s*(\d+)", re.IGNORECASE)


def build(url: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """One keep-alive POST of a JSON body, as bytes on the wire."""
    host = urlsplit(url).netloc
    lines = [f"POST {path} HTTP/1.1", f"host: {host}", "content-type: application/json"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _read_replies(sock: socket.socket, buf: bytearray, n: int) -> tuple[int, bytearray]:
    ok = 0
    while n:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("receiver closed the connection")
            buf += chunk
            continue
        m = _LENGTH.search(buf, 0, end + 2)
        total = end + 4 + (int(m.group(1)) if m else 0)
        while len(buf) < total:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("receiver closed the connection")
            buf += chunk
        ok += buf[9:12].startswith(b"2")
        del buf[:total]
        n -= 1
    return ok, buf


def run(url: str, requests: list[bytes], window: int) -> dict[str, float]:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    ok = 0
    start = time.time()
    for i in range(0, len(requests), window):
        batch = requests[i : i + window]
        sock.sendall(b"".join(batch))
        got, buf = _read_replies(sock, buf, len(batch))
        ok += got
    end = time.time()
    sock.close()
    return {"start": start, "end": end, "ok": ok, "sent": len(requests)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m bench._flood")
    ap.add_argument("--url", required=True)
    ap.add_argument("--file", required=True)
    ap.add_argument("--part", type=int, default=0)
    ap.add_argument("--parts", type=int, default=1)
    ap.add_argument("--window", type=int, default=32)
    args = ap.parse_args()
    with open(args.file, "rb") as f:
        mine = [r for call in pickle.load(f)[args.part :: args.parts] for r in call]
    print("ready", flush=True)
    sys.stdin.readline()
    print(json.dumps(run(args.url, mine, args.window)), flush=True)
