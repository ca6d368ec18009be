"""The call id: explicit > PipelineTask > runner arguments > a fresh UUID."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from ._errors import logger, should_log


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


def synced_call_id(call_id: str, explicit: bool, task_id: str | None) -> str:
    """At processor setup: the id given to ``PipelineTask`` wins unless ours was explicit."""
    if task_id and not explicit:
        return task_id
    if task_id and task_id != call_id:
        logger.warning(
            "RoarkObserver and PipelineTask were given different conversation ids; "
            "using the observer's (%s)",
            call_id,
        )
    return call_id


def followed_call_id(call_id: str, explicit: bool, pipecat_id: str | None) -> str:
    """Pipecat's span has its own id (we could not set ours): take it, or report the mismatch."""
    if pipecat_id is None or pipecat_id == call_id:
        return call_id
    if not explicit:
        return pipecat_id
    if should_log("id_mismatch"):
        logger.warning(
            "Pipecat's conversation span has conversation.id %s but the call id is %s: "
            "pass the same id to PipelineTask(conversation_id=...) on this Pipecat version",
            pipecat_id,
            call_id,
        )
    return call_id
