"""A call's directory as read under its lock: which items exist, which are done."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

from ._items import ENDED, STARTED, ItemId, chunk, segment

DEAD_PREFIX: Final = "dead "


@dataclass(frozen=True, slots=True)
class SentLog:
    """A call's sent log, parsed; ``damaged`` counts lines that named no item."""

    sent: frozenset[ItemId]
    dead: frozenset[ItemId]
    damaged: int = 0

    @classmethod
    def parse(cls, data: bytes) -> SentLog:
        sent: set[ItemId] = set()
        dead: set[ItemId] = set()
        damaged = 0
        for raw in data.decode("utf-8", errors="replace").splitlines():
            line = raw.strip()
            if not line:
                continue
            into = dead if line.startswith(DEAD_PREFIX) else sent
            item = ItemId.parse(line.removeprefix(DEAD_PREFIX))
            if item is None:
                damaged += 1
            else:
                into.add(item)
        return cls(frozenset(sent), frozenset(dead), damaged)

    def __or__(self, other: SentLog) -> SentLog:
        return SentLog(self.sent | other.sent, self.dead | other.dead, self.damaged + other.damaged)

    def dump(self) -> bytes:
        lines = [str(i) for i in sorted(self.sent)] + [
            DEAD_PREFIX + str(i) for i in sorted(self.dead)
        ]
        return "".join(f"{x}\n" for x in lines).encode()


@dataclass(frozen=True, slots=True)
class CallState:
    """A snapshot of one call's directory, read under its lock."""

    key: str
    call_id: str | None
    started: bool
    segments: frozenset[int]
    chunks: frozenset[int]
    end: bool
    end_mtime: float | None
    log: SentLog
    last_activity: float

    @property
    def sent(self) -> frozenset[ItemId]:
        return self.log.sent

    @property
    def dead(self) -> frozenset[ItemId]:
        return self.log.dead

    def items(self) -> set[ItemId]:
        """The item files this snapshot saw, less the chunks delivered since."""
        found = {chunk(i) for i in self.chunks} | {segment(i) for i in self.segments}
        return found | {i for i, there in ((STARTED, self.started), (ENDED, self.end)) if there}

    def done(self, item: ItemId) -> bool:
        """Delivered or dead-lettered: either way nothing more to do for it."""
        return item in self.log.sent or item in self.log.dead

    def delivered(self, item: ItemId, at: float) -> CallState:
        """This snapshot after ``mark_sent(item)`` at ``at``, as a fresh read would see it."""
        log = SentLog(self.log.sent | {item}, self.log.dead)
        chunks = self.chunks - {item.index} if item.kind == "chunk" else self.chunks
        return replace(self, chunks=chunks, log=log, last_activity=max(self.last_activity, at))
