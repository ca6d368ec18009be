"""Small file helpers of the outbox: atomic writes, appends, private folders."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Final

from ._state import SentLog

TMP_PREFIX: Final = ".tmp-"


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}-{path.name}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def append_line(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def read_json(path: Path) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read())


def read_log(path: Path) -> SentLog:
    try:
        with open(path, "rb") as f:
            return SentLog.parse(f.read())
    except FileNotFoundError:
        return SentLog(frozenset(), frozenset())


def mkdir_private(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
