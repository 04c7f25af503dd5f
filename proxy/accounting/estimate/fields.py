"""Reading the API's JSON objects without trusting their shape. Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["as_int", "as_list", "as_str", "get", "strings", "types_of"]


def get(obj: object, *path: str) -> object:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, list | tuple) else []


def as_int(value: object) -> int | None:
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def as_str(value: object) -> str:
    return value if isinstance(value, str) else ""


def strings(value: object) -> list[str]:
    """The strings of a list, in order: anything else in it is not an id or a name."""
    return [item for item in as_list(value) if isinstance(item, str)]


def types_of(value: object) -> set[str]:
    """The `type` of each object of a list (tools, parts), where it is a string."""
    return {kind for item in as_list(value) if isinstance(kind := get(item, "type"), str)}
