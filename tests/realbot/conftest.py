"""The real bot, offline: skip only where a piece is missing on this machine."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from types import ModuleType

import pytest

for extra in ("deepgram", "openai", "onnxruntime", "fastapi", "uvicorn", "aiohttp"):
    pytest.importorskip(extra, reason="install the bot extra: pip install -e '.[bot]'")

if shutil.which("espeak-ng") is None:
    pytest.skip(
        "espeak-ng speaks the caller's lines (Debian: apt-get install espeak-ng)",
        allow_module_level=True,
    )

from examples.offline.vendors import Vendors  # noqa: E402
from pipecat_roark_otel.devserver import LocalRoark  # noqa: E402

from .harness import load_bot  # noqa: E402

pytestmark = pytest.mark.e2e


@pytest.fixture
def bot(monkeypatch: pytest.MonkeyPatch, roark: LocalRoark) -> ModuleType:
    monkeypatch.setenv("ROARK_API_KEY", roark.api_key)
    monkeypatch.setenv("ROARK_BASE_URL", roark.base_url)
    return load_bot()


@pytest.fixture
async def vendors(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Vendors]:
    """The stand-ins; callers tell them what they say (``on_say=vendors.caller_says``)."""
    async with Vendors() as v:
        for name, value in v.env().items():
            monkeypatch.setenv(name, value)
        yield v
