"""The dead-letter store of an outbox: list, show, resend, purge; only inside ``dead/``.

Keys are validated and paths resolved before anything is read or removed, so
``purge ..`` or ``show ../calls/<key>`` find nothing (issue 15).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from ._files import mkdir_private, read_call_file, read_log
from ._items import ItemId
from ._outbox import Outbox, call_key, is_key
from ._state import SentLog


class DeadLetters:
    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def call_keys(self) -> list[str]:
        return self.outbox.dead_keys()

    def resolve(self, key_or_call_id: str) -> str:
        """A key from ``list`` as is; anything else is a call id, hashed (so never a path)."""
        return key_or_call_id if is_key(key_or_call_id) else call_key(key_or_call_id)

    def _dir(self, key: str) -> Path | None:
        """``dead/<key>``, only for a well-formed key whose path stays inside the dead store."""
        if not is_key(key):
            return None
        d = (self.outbox.dead_dir / key).resolve()
        if (
            d.parent != self.outbox.dead_dir.resolve()
            or not d.is_dir()
            or (self.outbox.dead_dir / key).is_symlink()
        ):
            return None
        return d

    def info(self, key: str) -> dict[str, Any] | None:
        d = self._dir(key)
        if d is None:
            return None
        call_id: str | None = None
        with contextlib.suppress(OSError, ValueError, AttributeError):
            call_id = read_call_file(d / "call.json").call_id
        found = (ItemId.from_filename(e.name) for e in os.scandir(d))
        items = sorted(str(item) for item in found if item is not None)
        return {"key": key, "callId": call_id, "items": items, "reasons": self.outbox.reasons(key)}

    def resend(self, key: str) -> int:
        """Move a call's dead items back into the live queue. Returns how many items moved.

        Raises ``BlockingIOError`` if a process is delivering the call right now.
        """
        src = self._dir(key)
        if src is None:
            return 0
        lock = self.outbox.try_lock(key)
        if lock is None:
            raise BlockingIOError(f"call {key} is being delivered right now; try again")
        try:
            with contextlib.suppress(FileNotFoundError):
                (self.outbox.done_dir / key).unlink()
            dst = self.outbox.calls_dir / key
            mkdir_private(dst)
            here = self.outbox.call_log(str(dst))
            moved: list[ItemId] = []
            for e in list(os.scandir(src)):
                item = ItemId.from_filename(e.name)
                if item is not None:
                    os.replace(e.path, dst / e.name)
                    moved.append(item)
                elif e.name in ("call.json", "audio.json") and not (dst / e.name).exists():
                    os.replace(e.path, dst / e.name)
            # Keep what was delivered, forget that the moved items died.
            there = read_log(src / "sent.log")
            log = SentLog(here.sent | there.sent, (here.dead | there.dead) - set(moved))
            self.outbox.rewrite_log(str(dst), log)
            shutil.rmtree(src, ignore_errors=True)
            return len(moved)
        finally:
            lock.release()

    def purge(self, key: str) -> bool:
        d = self._dir(key)
        if d is None:
            return False
        shutil.rmtree(d)
        return True
