from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from pipecat_roark_otel import _errors

_errors.set_raise_internal_errors(True)

_OUR_ENV = ("ROARK_API_KEY", "ROARK_BASE_URL", "ROARK_SPOOL_DIR")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name in _OUR_ENV or name.startswith("OTEL_"):
            monkeypatch.delenv(name, raising=False)
    yield
