"""Tool arguments and results as the strings Roark takes (capture rule 10); pure.

Containers keep their shape (tuples and sets become arrays); leaves JSON cannot
hold become readable strings, never a Python repr of the container.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import enum
import json
import math
from collections.abc import Mapping, Sequence, Set
from typing import Any

# Deeper than any real tool payload; what lies below is written as a string.
_MAX_DEPTH = 64
_CYCLE = "<cycle>"


def _text(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__}>"


def _leaf(value: object) -> str | int | float | bool | None:
    """A value JSON can hold, or a readable string for it."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        # NaN and infinities are not JSON.
        return value if math.isfinite(value) else _text(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode("ascii")
    # Decimal, UUID, paths and any other object: its str(), which is readable.
    return _text(value)


def _key(key: object) -> str | int | float | bool | None:
    """A mapping key as JSON takes it: scalars as json.dumps would write them, else a string."""
    if key is None or isinstance(key, (str, bool, int)):
        return key
    if isinstance(key, float) and math.isfinite(key):
        return key
    if isinstance(key, (tuple, frozenset)):
        return _dumps(jsonable(key))
    leaf = _leaf(key)
    return leaf if isinstance(leaf, str) else _text(leaf)


def jsonable(value: object, _depth: int = 0, _stack: frozenset[int] = frozenset()) -> Any:
    """``value`` as plain JSON types of the same shape."""
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, (str, bool, int, float)):
        return _leaf(value)
    if id(value) in _stack:
        return _CYCLE
    if _depth >= _MAX_DEPTH:
        return _text(value)
    inner = _stack | {id(value)}
    if isinstance(value, Mapping):
        return {_key(k): jsonable(v, _depth + 1, inner) for k, v in value.items()}
    if isinstance(value, (Set, Sequence)) and not isinstance(value, (str, bytes, bytearray)):
        items = [jsonable(v, _depth + 1, inner) for v in value]
        if isinstance(value, Set):
            # A set has no order of its own: sort when the items allow it, for stable output.
            with contextlib.suppress(TypeError):
                items.sort()
        return items
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
        return jsonable(fields, _depth, _stack)
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump) and not isinstance(value, type):
        # A pydantic model: its fields, as it would dump them.
        try:
            dumped = model_dump()
        except Exception:
            return _text(value)
        return jsonable(dumped, _depth, inner)
    return _leaf(value)


def _dumps(value: Any) -> str:
    # Compact separators, ASCII escapes: byte for byte what Roark's own observer sends.
    return json.dumps(value, separators=(",", ":"))


def _is_container(value: object) -> bool:
    if isinstance(value, (Mapping, Set)):
        return True
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray)):
        return True
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def arguments_to_json(value: object) -> str:
    """Contract: a string passes verbatim, None is ``"{}"``, anything else compact JSON."""
    if value is None:
        return "{}"
    if isinstance(value, str):
        return value
    try:
        return _dumps(jsonable(value))
    except Exception:
        return _dumps(_text(value))


def result_to_string(value: object) -> str:
    """Contract: objects and lists compact JSON, scalars ``str()``, None ``""``."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if _is_container(value) or callable(getattr(value, "model_dump", None)):
        try:
            return _dumps(jsonable(value))
        except Exception:
            return _text(value)
    return _text(value)
