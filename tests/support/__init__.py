"""Helpers the test files share: polling, fast delivery, local Roark requests, the simulated call.

``tests/support/capture.py`` holds the capture-rule harness.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from pipecat_roark_otel.exporter._delivery import DeliveryOptions

WEBHOOK = "/v1/integrations/pipecat"
PRESIGN = "/v1/integrations/pipecat/chunk-upload-url"
PCM = {"content-type": "audio/pcm"}
T0 = "2025-01-01T10:00:00.000Z"

# Delivery tuned for tests: retries in tens of milliseconds, not seconds.
FAST = DeliveryOptions(
    backoff_base=0.02,
    backoff_cap=0.2,
    auth_backoff_base=0.3,
    auth_backoff_cap=0.6,
    rescan_interval=0.1,
    probe_interval=0.3,
    request_timeout=2.0,
)

# What the local Roark must hold for the default simulated call (simulation.DEFAULT_SCRIPT).
EXPECTED_TURNS = [
    ("assistant", "Hello! Thanks for calling Copperline Care. How can I help?"),
    ("user", "I'd like to check on my order"),
    ("assistant", "Sure, let me look that up for you."),
    ("user", "Is it arriving today"),
    # Interrupted after six words played: the rest was never heard.
    ("assistant", "Your order shipped yesterday and will"),
    ("user", "Great thanks"),
    ("assistant", "You're welcome. Goodbye!"),
]


def wait_until(cond: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Poll ``cond`` until it holds; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.02)


def auth_headers(key: str) -> dict[str, str]:
    """Both headers the Roark API wants, carrying the same key."""
    return {"x-roark-api-key": key, "authorization": f"Bearer {key}"}


def started_body(call_id: str, **extra: Any) -> dict[str, Any]:
    """A valid call-started body, as the contract writes it."""
    return {
        "event": "call-started",
        "pipecatCallId": call_id,
        "eventTimestamp": T0,
        "agentId": "agent-1",
        **extra,
    }


def ended_body(call_id: str, **extra: Any) -> dict[str, Any]:
    """A valid call-ended body, a minute after ``started_body``."""
    return {
        "event": "call-ended",
        "pipecatCallId": call_id,
        "eventTimestamp": "2025-01-01T10:01:00Z",
        "callStartedAt": T0,
        "callEndedAt": "2025-01-01T10:01:00Z",
        "callEndedReason": "agent-ended",
        **extra,
    }


def presign(api: httpx.Client, call_id: str, index: int) -> str:
    """A fresh upload URL for one chunk, from the local Roark ``api`` points at."""
    body = {"pipecatCallId": call_id, "chunkIndex": index, "contentType": "audio/pcm"}
    resp = api.post(PRESIGN, json=body)
    assert resp.status_code == 200, resp.text
    url: str = resp.json()["data"]["uploadUrl"]
    return url
