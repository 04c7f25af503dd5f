"""The private pipe between the serving process and its collector process: one JSON object per
line, over a socketpair that exists only between the two (keys cross it, so it is never a file,
an argument or an environment variable, and no line of it is ever logged).

To the collector: `{"settings": {...}}` first, then `{"key": [fingerprint, [[name, value],
...]]}` whenever a key is new, changes or is still in use, and `{"wake": 1}` when jobs were
written. From the collector: `{"ready": 1}` once it collects, then `{"metric": [name,
[args]]}`, applied to the serving process's
metrics, which /_proxy/metrics shows. Encoding and decoding are pure; `messages` reads them off
either end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import orjson

from proxy.keys import Headers
from proxy.settings import Settings

__all__ = [
    "METRICS",
    "READY",
    "WAKE",
    "WireError",
    "decode",
    "key_line",
    "messages",
    "metric_line",
    "settings_from",
    "settings_line",
]

_log = logging.getLogger("proxy.accounting.collector")

WAKE = b'{"wake":1}\n'
READY = b'{"ready":1}\n'
# The metrics the collector reports, by the name of their proxy.metrics.Metrics method, and how
# many arguments each takes: nothing else is applied in the serving process.
METRICS = {"run_recorded": 2, "collection_failed": 2, "usage": 5}


class WireError(ValueError):
    """A line that is not one of the messages above. Says what is wrong, never what it held."""


def settings_line(settings: Settings) -> bytes:
    return orjson.dumps({"settings": dataclasses.asdict(settings)}) + b"\n"


def settings_from(value: object) -> Settings:
    if not isinstance(value, dict):
        raise WireError("settings: not an object")
    names = {f.name for f in dataclasses.fields(Settings)}
    if set(value) - names:
        raise WireError(f"settings: unknown names {sorted(set(value) - names)}")
    return Settings(**value)


def key_line(fp: str, headers: Headers) -> bytes:
    return orjson.dumps({"key": [fp, headers]}) + b"\n"


def metric_line(name: str, *args: Any) -> bytes:
    # Cost is a Decimal: as a string, so the serving process adds exactly what was recorded.
    return orjson.dumps({"metric": [name, args]}, default=str) + b"\n"


def decode(line: bytes) -> tuple[str, Any]:
    """(kind, payload) of one line: ("settings", Settings), ("key", (fp, headers)),
    ("wake", None), ("ready", None) or ("metric", (name, args))."""
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise WireError("not JSON") from None
    if not isinstance(message, dict) or len(message) != 1:
        raise WireError("not an object of one message")
    [(kind, payload)] = message.items()
    if kind == "settings":
        return kind, settings_from(payload)
    if kind in ("wake", "ready"):
        return kind, None
    if kind == "key":
        return kind, _key(payload)
    if kind == "metric":
        return kind, _metric(payload)
    raise WireError(f"unknown message {kind!r}")


async def messages(reader: asyncio.StreamReader, sender: str) -> AsyncIterator[tuple[str, Any]]:
    """Each message `sender` writes, decoded, until it closes its end; a bad line is logged
    (what was wrong with it, not what it held) and skipped."""
    while line := await reader.readline():
        try:
            yield decode(line)
        except WireError as exc:
            _log.error("a bad message from the %s: %s", sender, exc)


def _key(payload: object) -> tuple[str, Headers]:
    match payload:
        case [str(fp), list(pairs)] if all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
            for p in pairs
        ):
            return fp, tuple((name, value) for name, value in pairs)
    raise WireError("key: not [fingerprint, [[name, value], ...]]")


def _metric(payload: object) -> tuple[str, list[Any]]:
    match payload:
        case [str(name), list(args)] if METRICS.get(name) == len(args):
            if name in ("run_recorded", "collection_failed") and not _count(args[1]):
                raise WireError(f"metric: {name} count is not a whole number")
            if name == "usage":
                try:
                    args = [*args[:4], Decimal(str(args[4]))]
                except ArithmeticError:
                    raise WireError("metric: usage cost is not a number") from None
            return name, args
    raise WireError("metric: not a known metric with its arguments")


def _count(value: object) -> bool:
    return type(value) is int and value >= 0
