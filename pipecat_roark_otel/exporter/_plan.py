"""What to deliver next for one call, from a snapshot of its directory; pure.

Per-call order (docs/CONTRACT.md, "Order and repeats"): call-started, then chunks by index,
then call-ended once the end record, all its segments and all its chunks are in,
or once the grace period after the end record has passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._items import ENDED, STARTED, chunk, segment
from ._payloads import EndRecord
from ._state import CallState

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
    end: EndRecord | None,
    now: float,
    *,
    grace: float,
    orphan: float,
) -> Action:
    """``end`` is the call's end record when ``state.end`` (its counts are bounded).

    A call that ended before it started (``end.started`` False) never has a call-started.
    """
    if state.done(ENDED):
        # Items resent from the dead-letter store after the call ended go out late (the
        # receiver rebuilds the recording); completing now would delete them unsent.
        if state.started and not state.done(STARTED):
            return SEND_STARTED
        late = sorted(i for i in state.chunks if not state.done(chunk(i)))
        return Action("chunk", index=late[0]) if late else COMPLETE
    idle_deadline = state.last_activity + orphan
    if not state.done(STARTED):
        if state.started:
            return SEND_STARTED
        if end is not None and not end.started:
            return _after_started(state, end, now, grace)
        # Chunks and the end wait for call-started (the span processor may hold it 5 s).
        if now >= idle_deadline:
            return Action("dead_orphan")
        return Action("wait", until=idle_deadline)
    if not state.end or end is None:
        waiting = sorted(i for i in state.chunks if not state.done(chunk(i)))
        if waiting:
            return Action("chunk", index=waiting[0])
        if now >= idle_deadline:
            return Action("orphan")
        return Action("wait", until=idle_deadline)
    return _after_started(state, end, now, grace)


def _after_started(state: CallState, end: EndRecord, now: float, grace: float) -> Action:
    waiting = sorted(i for i in state.chunks if not state.done(chunk(i)))
    if waiting:
        return Action("chunk", index=waiting[0])
    missing_segments = tuple(
        i for i in range(end.segments) if i not in state.segments and not state.done(segment(i))
    )
    missing_chunks = tuple(i for i in range(end.chunks) if not state.done(chunk(i)))
    if not missing_segments and not missing_chunks:
        return Action("ended")
    deadline = (state.end_mtime or now) + grace
    if now >= deadline:
        return Action("ended", missing_segments=missing_segments, missing_chunks=missing_chunks)
    return Action("wait", until=deadline)
