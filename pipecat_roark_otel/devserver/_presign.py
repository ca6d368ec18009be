"""Presigned, one-shot, expiring upload URLs: HMAC-SHA256 over (key, call, chunk, expiry, nonce)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode

from ._ids import safe_name

UPLOAD_PREFIX = "/_s3/"


@dataclass(frozen=True, slots=True)
class Grant:
    """One signed permission to PUT one chunk; ``nonce`` makes it single-use."""

    call_id: str
    chunk_index: int
    s3_key: str
    expires_ms: int
    nonce: str


class PresignError(Exception):
    """An upload S3 would refuse: ``code`` is the S3 error code (403 unless told)."""

    def __init__(self, code: str, message: str, *, status: int = 403) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def s3_key(call_id: str, chunk_index: int) -> str:
    return f"pipecat/{safe_name(call_id)}/{chunk_index:06d}.pcm"


class Signer:
    """Issues and verifies upload URLs with a server secret that persists with the store."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _sign(self, key: str, call_id: str, chunk_index: int, expires_ms: int, nonce: str) -> str:
        msg = "\n".join((key, call_id, str(chunk_index), str(expires_ms), nonce))
        return hmac.new(
            self._secret, msg.encode("utf-8", "surrogatepass"), hashlib.sha256
        ).hexdigest()

    def issue(self, call_id: str, chunk_index: int, *, expires_ms: int) -> tuple[Grant, str]:
        """A grant and the path+query of its URL (the caller prefixes the origin)."""
        key = s3_key(call_id, chunk_index)
        nonce = secrets.token_hex(12)
        query = urlencode(
            {
                "X-Roark-Call": call_id,
                "X-Roark-Chunk": chunk_index,
                "X-Roark-Expires": expires_ms,
                "X-Roark-Nonce": nonce,
                "X-Roark-Signature": self._sign(key, call_id, chunk_index, expires_ms, nonce),
            }
        )
        return Grant(call_id, chunk_index, key, expires_ms, nonce), f"{UPLOAD_PREFIX}{key}?{query}"

    def verify(self, path: str, query: str, *, now_ms: int) -> Grant:
        """The grant a URL carries; PresignError if it is forged, tampered or expired."""
        params = parse_qs(query, keep_blank_values=True)
        try:
            (call_id,) = params["X-Roark-Call"]
            chunk_index = int(params["X-Roark-Chunk"][0])
            expires_ms = int(params["X-Roark-Expires"][0])
            (nonce,) = params["X-Roark-Nonce"]
            (signature,) = params["X-Roark-Signature"]
        except (KeyError, ValueError, IndexError):
            raise PresignError("AccessDenied", "Query-string authentication required") from None
        key = path.removeprefix(UPLOAD_PREFIX)
        expected = self._sign(key, call_id, chunk_index, expires_ms, nonce)
        if key != s3_key(call_id, chunk_index) or not hmac.compare_digest(signature, expected):
            raise PresignError(
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided",
            )
        if now_ms >= expires_ms:
            raise PresignError("AccessDenied", "Request has expired")
        return Grant(call_id, chunk_index, key, expires_ms, nonce)
