"""The real bot, offline: skip only where a piece is missing on this machine."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from types import ModuleType

import pytest

from examples.offline.vendors import Vendors
from pipecat_roark_otel.devserver import LocalRoark

from .harness import load_bot

BOT_EXTRA = "install the bot extra: pip install -e '.[bot]'"


@pytest.fixture
def bot(monkeypatch: pytest.MonkeyPatch, roark: LocalRoark) -> ModuleType:
    """examples/bot.py, its keys and Roark settings in the environment."""
    for extra in ("deepgram", "openai", "onnxruntime", "fastapi", "uvicorn"):
        pytest.importorskip(extra, reason=BOT_EXTRA)
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng speaks the caller's lines (Debian: apt-get install espeak-ng)")
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Real-time calls run last: the slowest tests should not hold up everyone else's.
    items[:] = sorted(items, key=lambda item: "tests/realbot/" in str(item.path))
