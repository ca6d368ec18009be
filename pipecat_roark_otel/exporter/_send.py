"""One attempt and its outcome: a request to Roark, classified; no state, no waiting."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ._client import RoarkClient, RoarkHTTPError
from ._retry import Outcome, classify, parse_retry_after

Request = Callable[[RoarkClient, float], object]
# A refused presigned PUT (expired, used) gets a fresh URL at once, this many times in
# one attempt: presign and PUT are never parted by a backoff or a queue wait.
FRESH_URLS: Final = 3


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    status: int | None = None
    message: str = ""
    wait: float | None = None  # the server's Retry-After, in seconds
    refused: bool = False  # a presigned PUT refused: the server did answer


OK: Final = Result(Outcome.OK)


class PutRefused(Exception):
    """Every fresh URL was refused: retried later, dead-lettered after a long window."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.message = message


def attempt(request: Request, client: RoarkClient, timeout: float, now: float) -> Result:
    try:
        request(client, timeout)
    except PutRefused as exc:
        return Result(Outcome.RETRY, exc.status, exc.message, refused=True)
    except RoarkHTTPError as exc:
        wait = parse_retry_after(exc.retry_after, now)
        return Result(classify(exc.status), exc.status, exc.message, wait)
    return OK


def upload(call_id: str, index: int, pcm: bytes) -> Request:
    """Presign and PUT back to back; a refused URL is replaced by a fresh one immediately."""

    def request(client: RoarkClient, timeout: float) -> object:
        for left in reversed(range(FRESH_URLS)):
            url = client.presign(call_id, index, timeout=timeout).uploadUrl
            try:
                return client.put_chunk(url, pcm, timeout=timeout)
            except RoarkHTTPError as exc:
                refused = exc.status is not None and classify(exc.status) in (
                    Outcome.AUTH,
                    Outcome.PERMANENT,
                )
                if not refused:
                    raise
                if not left:
                    raise PutRefused(exc.status or 0, exc.message) from None
        raise AssertionError("unreachable")

    return request


def post(body: bytes) -> Request:
    def request(client: RoarkClient, timeout: float) -> object:
        return client.post_event(body, timeout=timeout)

    return request
