"""The private pipe between the serving process and its collector process: one JSON object per
line, over a socketpair that exists only between the two (keys cross it, so it is never a file,
an argument or an environment variable, and no line of it is ever logged).

To the collector: `{"settings": {...}}` first, then `{"key": [fingerprint, [[name, value],
...]]}` whenever a key is new, changes or is still in use, and `{"wake": 1}` when jobs were
written. From the collector: `{"ready": 1}` once it collects, then `{"recorded": [[kind,
usage_source, team, model, events, prompt, completion, cost, unpriced], ...]}` after each
transaction that recorded runs (a proxy.accounting.usage.UsageRecorded, which the serving
process hands to its subscribers, the metrics among them) and `{"failed": [reason, count]}`
when collection fails. Encoding and decoding are pure; `messages` reads them off either end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import orjson

from proxy.accounting.usage import UsageRecorded, UsageTotal
from proxy.keys import Headers
from proxy.settings import Settings

__all__ = [
    "READY",
    "WAKE",
    "WireError",
    "decode",
    "failed_line",
    "key_line",
    "messages",
    "recorded_line",
    "settings_from",
    "settings_line",
]

_log = logging.getLogger("proxy.accounting.collector")

WAKE = b'{"wake":1}\n'
READY = b'{"ready":1}\n'


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


def recorded_line(event: UsageRecorded) -> bytes:
    # Cost is a Decimal: as a string, so the serving process adds exactly what was recorded.
    totals = [dataclasses.astuple(total) for total in event.totals]
    return orjson.dumps({"recorded": totals}, default=str) + b"\n"


def failed_line(reason: str, n: int) -> bytes:
    return orjson.dumps({"failed": [reason, n]}) + b"\n"


def decode(line: bytes) -> tuple[str, Any]:
    """(kind, payload) of one line: ("settings", Settings), ("key", (fp, headers)),
    ("wake", None), ("ready", None), ("recorded", UsageRecorded) or ("failed", (reason, n))."""
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
    if kind == "recorded":
        return kind, _recorded(payload)
    if kind == "failed":
        return kind, _failed(payload)
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


def _recorded(payload: object) -> UsageRecorded:
    if not isinstance(payload, list):
        raise WireError("recorded: not a list of totals")
    return UsageRecorded(tuple(map(_total, payload)))


def _total(item: object) -> UsageTotal:
    match item:
        case [
            str(kind),
            str(source),
            str(team),
            model,
            events,
            prompt,
            completion,
            str(cost),
            unpriced,
        ] if (
            (model is None or isinstance(model, str))
            and _count(events)
            and _count(prompt)
            and _count(completion)
            and _count(unpriced)
        ):
            try:
                exact = Decimal(cost)
            except ArithmeticError:
                raise WireError("recorded: a cost is not a number") from None
            return UsageTotal(
                kind, source, team, model, events, prompt, completion, exact, unpriced
            )
    raise WireError(
        "recorded: not [kind, source, team, model, events, prompt, completion, cost, unpriced]"
    )


def _failed(payload: object) -> tuple[str, int]:
    match payload:
        case [str(reason), n] if _count(n):
            return reason, n
    raise WireError("failed: not [reason, count]")


def _count(value: object) -> bool:
    return type(value) is int and value >= 0
