"""Custom call attributes (``RoarkObserver(attributes=...)``, ``set_attributes``), validated.

At construction a bad attribute is a ``ValueError``; while the call runs it is
logged (key and reason, never the value) and counted, and the rest still apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from opentelemetry.util.types import AttributeValue

from . import _errors
from . import semconv as sc

SETTING: Final = "RoarkObserver(attributes=...)"
# The call span's own attributes are set last, at call end: room must be left for
# them under the SDK's per-span attribute limit (128 by default).
MAX_CUSTOM: Final = 32
_SCALARS: Final = (str, bool, int, float)


def problem(key: object, value: object) -> str | None:
    """Why ``key: value`` cannot be a custom attribute, or None when it can."""
    if not isinstance(key, str) or not key.strip():
        return "keys must be non-empty strings"
    if key in sc.RESERVED_ATTRIBUTES or key.startswith(sc.RESERVED_PREFIXES):
        return f"{key!r} is reserved for the call record"
    if isinstance(value, _SCALARS):
        return None
    if isinstance(value, (list, tuple)):
        kinds = {bool if isinstance(v, bool) else type(v) for v in value}
        if len(kinds) <= 1 and kinds <= {str, bool, int, float}:
            return None
        return f"{key!r}: a sequence must hold one type of str, bool, int or float"
    return f"{key!r}: values must be str, bool, int, float or a list of one of them"


def resolve(attributes: object) -> dict[str, AttributeValue]:
    """The constructor's attributes, or a ``ValueError`` naming the setting."""
    if attributes is None:
        return {}
    if not isinstance(attributes, Mapping):
        raise ValueError(f"{SETTING} must be a mapping of attribute names to values")
    for key, value in attributes.items():
        reason = problem(key, value)
        if reason is not None:
            raise ValueError(f"{SETTING}: {reason}")
    if len(attributes) > MAX_CUSTOM:
        raise ValueError(f"{SETTING}: at most {MAX_CUSTOM} attributes per call")
    return {key: _frozen(value) for key, value in attributes.items()}


def accept(
    attributes: object, current: Mapping[str, AttributeValue], call_id: str
) -> dict[str, AttributeValue]:
    """The attributes that may join ``current`` mid-call; the others are logged and counted."""
    if not isinstance(attributes, Mapping):
        _reject(call_id, "set_attributes() takes a mapping of attribute names to values")
        return {}
    accepted: dict[str, AttributeValue] = {}
    room = MAX_CUSTOM - len(current)
    for key, value in attributes.items():
        reason = problem(key, value)
        if reason is None and key not in current and key not in accepted:
            if room <= 0:
                reason = f"{key!r}: a call takes at most {MAX_CUSTOM} custom attributes"
            else:
                room -= 1
        if reason is None:
            accepted[key] = _frozen(value)
        else:
            _reject(call_id, reason)
    return accepted


def reject_late(call_id: str, count: int) -> None:
    """Attributes set after the call span ended have nowhere to go."""
    _reject(call_id, f"the call has ended; {count} attribute(s) not set")


def _reject(call_id: str, reason: str) -> None:
    _errors.count_drop("attribute_rejected")
    if _errors.should_log(f"attribute_rejected:{reason}"):
        _errors.logger.warning("call %s: custom attribute rejected: %s", call_id, reason)


def _frozen(value: AttributeValue) -> AttributeValue:
    # A list the caller keeps and mutates later must not change what was recorded.
    return tuple(value) if isinstance(value, list) else value
