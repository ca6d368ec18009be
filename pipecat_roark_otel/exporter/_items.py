"""Typed outbox item ids: the one place an item becomes a string (log line, file name) and back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Kind = Literal["started", "chunk", "segment", "ended"]

# Every index read from disk or the wire is bounded by this before use (six digits: the
# file names). At 5 s per chunk that is 57 days of audio; a larger value is hostile input.
MAX_INDEX: Final = 999_999
_KINDS: Final[dict[str, Kind]] = {k: k for k in ("started", "chunk", "segment", "ended")}
_INDEXED: Final = ("chunk", "segment")
_FILES: Final[dict[Kind, str]] = {"started": "started.json", "ended": "end.json"}
_PATTERNS: Final[dict[Kind, tuple[str, str]]] = {
    "chunk": ("chunk-", ".pcm"),
    "segment": ("seg-", ".json"),
}


@dataclass(frozen=True, slots=True, order=True)
class ItemId:
    """``started``, ``chunk N``, ``segment N`` or ``ended`` of one call."""

    kind: Kind
    index: int = 0

    def __str__(self) -> str:
        return f"{self.kind} {self.index}" if self.kind in _INDEXED else self.kind

    @property
    def filename(self) -> str:
        if self.kind in _PATTERNS:
            prefix, ext = _PATTERNS[self.kind]
            return f"{prefix}{self.index:06d}{ext}"
        return _FILES[self.kind]

    @classmethod
    def parse(cls, text: str) -> ItemId | None:
        """The id a sent-log line names; None for anything else (damaged or foreign)."""
        word, _, num = text.strip().partition(" ")
        kind = _KINDS.get(word)
        if kind is None:
            return None
        if kind in _FILES:
            return None if num else cls(kind)
        index = _index(num)
        return None if index is None else cls(kind, index)

    @classmethod
    def from_filename(cls, name: str) -> ItemId | None:
        for kind, file in _FILES.items():
            if name == file:
                return cls(kind)
        for kind, (prefix, ext) in _PATTERNS.items():
            if name.startswith(prefix) and name.endswith(ext):
                index = _index(name[len(prefix) : -len(ext)])
                return None if index is None else cls(kind, index)
        return None


def _index(text: str) -> int | None:
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_INDEX)):
        return None
    return int(text)


STARTED: Final = ItemId("started")
ENDED: Final = ItemId("ended")


def chunk(index: int) -> ItemId:
    return ItemId("chunk", index)


def segment(index: int) -> ItemId:
    return ItemId("segment", index)
