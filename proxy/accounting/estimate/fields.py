"""Reading the API's JSON objects without trusting their shape. Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["as_int", "as_list", "as_str", "get"]


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
