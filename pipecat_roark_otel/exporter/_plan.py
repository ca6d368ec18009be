"""What to deliver next for one call, from a snapshot of its directory; pure.

Per-call order (docs/CONTRACT.md, "Order and repeats"): call-started, then chunks by index,
then call-ended once the end record, all its segments and all its chunks are in,
or once the grace period after the end record has passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._outbox import ENDED, STARTED, CallState, chunk_item

ActionKind = Literal["started", "chunk", "ended", "orphan", "dead_orphan", "complete", "wait"]


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    index: int = 0
    # For "wait": when to look again (None: only when something changes on disk).
    until: float | None = None
    # For "ended": what never arrived (sent anyway after the grace period).
    missing_segments: tuple[int, ...] = ()
    missing_chunks: tuple[int, ...] = ()


COMPLETE = Action("complete")
SEND_STARTED = Action("started")


def plan(
    state: CallState,
    end: tuple[int, int, bool] | None,
    now: float,
    *,
    grace: float,
    orphan: float,
) -> Action:
    """``end`` is the end record's ``(segments, chunks, announced)`` when ``state.end``.

    A call that ended before it started (``announced`` False) never has a call-started.
    """
    if state.done(ENDED):
        # Items resent from the dead-letter store after the call ended go out late (the
        # receiver rebuilds the recording); completing now would delete them unsent.
        if state.started and not state.done(STARTED):
            return SEND_STARTED
        late = sorted(i for i in state.chunks if not state.done(chunk_item(i)))
        return Action("chunk", index=late[0]) if late else COMPLETE
    idle_deadline = state.last_activity + orphan
    if not state.done(STARTED):
        if state.started:
            return SEND_STARTED
        if end is not None and not end[2]:
            return _after_started(state, end, now, grace)
        # Chunks and the end wait for call-started (the span processor may hold it 5 s).
        if now >= idle_deadline:
            return Action("dead_orphan")
        return Action("wait", until=idle_deadline)
    if not state.end or end is None:
        waiting = sorted(i for i in state.chunks if not state.done(chunk_item(i)))
        if waiting:
            return Action("chunk", index=waiting[0])
        if now >= idle_deadline:
            return Action("orphan")
        return Action("wait", until=idle_deadline)
    return _after_started(state, end, now, grace)


def _after_started(
    state: CallState, end: tuple[int, int, bool], now: float, grace: float
) -> Action:
    waiting = sorted(i for i in state.chunks if not state.done(chunk_item(i)))
    if waiting:
        return Action("chunk", index=waiting[0])
    segments, chunks, _ = end
    missing_segments = tuple(i for i in range(segments) if i not in state.segments)
    missing_chunks = tuple(i for i in range(chunks) if not state.done(chunk_item(i)))
    if not missing_segments and not missing_chunks:
        return Action("ended")
    deadline = (state.end_mtime or now) + grace
    if now >= deadline:
        return Action("ended", missing_segments=missing_segments, missing_chunks=missing_chunks)
    return Action("wait", until=deadline)
