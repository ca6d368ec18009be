"""The call id: explicit > PipelineTask > runner arguments > a fresh UUID."""

from __future__ import annotations

import uuid
from collections.abc import Mapping


def _read(value: object, key: str) -> object:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return value.get(key)
    return getattr(value, key, None)


def _non_empty(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def id_from_runner_args(runner_args: object) -> str | None:
    """SmallWebRTC's peer-connection id names the media; Pipecat Cloud's session id next."""
    pc_id = _non_empty(_read(_read(runner_args, "webrtc_connection"), "pc_id"))
    return pc_id or _non_empty(_read(runner_args, "session_id"))


def initial_call_id(explicit: str | None, runner_args: object) -> tuple[str, bool]:
    """The id known at construction, and whether it outranks ``PipelineTask(conversation_id=)``."""
    if explicit:
        return explicit, True
    from_runner = id_from_runner_args(runner_args)
    if from_runner:
        # Runner ids rank below an id given to the task.
        return from_runner, False
    return str(uuid.uuid4()), False
