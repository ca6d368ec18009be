"""File-system-safe names for call ids, which may contain any character."""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_name(call_id: str) -> str:
    """A readable prefix plus a hash, so distinct ids never collide and nothing escapes a dir."""
    digest = hashlib.sha256(call_id.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    prefix = _UNSAFE.sub("_", call_id)[:32].strip("_")
    return f"{prefix}-{digest}" if prefix else digest
