"""Seeing Assistants runs, on any endpoint and any upstream, from their creation to their end.

Runs are recognised by content (`"object": "thread.run"`), in JSON bodies (a run, or a list of
runs) and in server-sent events (`thread.run.*` whose data is a run). The first time a run is
seen, in any status (its create, its first poll, a stream's `thread.run.created`), a collection
job is written to the database (the outbox) carrying the context needed to retrieve the run and
fetch its steps and messages later: the path prefix and query of the request it was seen in,
and the key's fingerprint. The key itself stays in memory. The first time the run is seen
finished, the job is written again with the finished run, so the collector need not retrieve
it itself. A crash between a client receiving a finished run and that write loses nothing:
the job was opened when the run was first seen, and the collector follows it.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from proxy.forwarding.decode import DecodeError, SSEEvent
from proxy.forwarding.exchange import Exchange
from proxy.keys import REFUSED, split_query

__all__ = [
    "TERMINAL_STATUSES",
    "RunObserver",
    "RunSighting",
    "api_context",
    "dump_run",
    "is_terminal",
    "run_in_event",
    "runs_in_body",
]

_log = logging.getLogger("proxy.accounting.runs")

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "expired", "incomplete"})
# Paging parameters of the request the run was seen in must not leak into the follow-up fetches.
_PAGING = frozenset({"limit", "after", "before", "order", "include", "include[]", "run_id"})


def _is_run(obj: object) -> bool:
    return (
        isinstance(obj, dict)
        and obj.get("object") == "thread.run"
        and isinstance(obj.get("id"), str)
        and isinstance(obj.get("thread_id"), str)
    )


def is_terminal(run: Mapping[str, Any]) -> bool:
    """Whether the run has ended (its usage is final)."""
    return run.get("status") in TERMINAL_STATUSES


def runs_in_body(body: object) -> Iterator[dict[str, Any]]:
    """Runs, in any status, in a JSON body: the body itself, or the items of a list of runs."""
    if _is_run(body):
        yield body  # type: ignore[misc]
    elif isinstance(body, dict) and body.get("object") == "list":
        for item in body.get("data") or ():
            if _is_run(item):
                yield item


def run_in_event(event: SSEEvent) -> dict[str, Any] | None:
    """The run carried by a `thread.run.*` event (not a step's), in any status."""
    if not event.event.startswith("thread.run.") or event.event.startswith("thread.run.step"):
        return None
    try:
        data = event.json()
    except DecodeError:
        return None
    return data if _is_run(data) else None


def dump_run(run: Mapping[str, Any]) -> str:
    """The run as JSON text, to store in its job."""
    try:
        return orjson.dumps(run).decode()
    except orjson.JSONEncodeError:
        # An integer beyond 64 bits: the standard library writes it.
        return json.dumps(run, separators=(",", ":"))


def api_context(path: str, query_string: str) -> tuple[str, str]:
    """(prefix, query) for follow-up URLs: the path before `/threads`, and the query string
    without paging parameters (so Azure's `api-version` survives) and without credentials
    (`?api-key=...`), which is stored: those the collector has from memory, with the key."""
    idx = path.find("/threads")
    prefix = path[:idx] if idx >= 0 else ("/v1" if path.startswith("/v1/") else "")
    if not query_string:
        return prefix, ""
    safe = split_query(query_string)[0]
    kept = [(k, v) for k, v in parse_qsl(safe, keep_blank_values=True) if k not in _PAGING]
    return prefix, urlencode(kept)


@dataclass(frozen=True, slots=True)
class RunSighting:
    """A run, in any status, and the request context it was seen in."""

    run: dict[str, Any]
    api_prefix: str
    api_query: str
    request_headers: Mapping[str, str]
    upstream_headers: Mapping[str, str] | None  # as sent: the credential comes from these
    query_string: str = ""  # as sent: it may carry the credential too (never stored)
    request_id: str = ""  # the exchange's: a run create's intent is found by it (creates.py)
    from_create: bool = False  # seen in the answer to a run create (POST .../runs)

    @property
    def terminal(self) -> bool:
        return is_terminal(self.run)

    @property
    def run_json(self) -> str:
        return dump_run(self.run)


class RunObserver:
    """Observer: turns runs into sightings handed to `open_job`: a run's first sighting, and
    its first sighting finished.

    Bounded in-memory sets of run ids already handed over (seen, and seen finished) are only a
    fast path, so a run polled a thousand times costs two database writes at most; the
    database's unique (source, object_id) decides.
    """

    def __init__(
        self,
        open_job: Callable[[RunSighting], Awaitable[None]],
        *,
        remember_key: Callable[[Mapping[str, str], str], None] | None = None,
        seen_capacity: int = 100_000,
    ) -> None:
        self._open_job = open_job
        self._remember_key = remember_key
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._capacity = seen_capacity

    async def on_event(self, exchange: Exchange, event: SSEEvent) -> None:
        run = run_in_event(event)
        if run is not None:
            await self._sighted(exchange, run)

    async def on_response(self, exchange: Exchange) -> None:
        sent = exchange.upstream_headers
        if self._remember_key is not None and sent is not None and exchange.status not in REFUSED:
            # Every request refreshes its key, so a waiting job can finish when the key returns
            # (not one the upstream refused: made-up keys must cost no memory).
            self._remember_key(sent, exchange.query_string)
        if exchange.status is None or not 200 <= exchange.status < 300 or exchange.is_sse:
            return
        if exchange.content_type != "application/json":
            return
        # find, not `in` on a slice: no copy of the body (a compressed one is decoded first).
        if (
            not _compressed(exchange)
            and exchange.raw_response_body.find(b"thread.run", 0, 65536) < 0
        ):
            return
        for run in runs_in_body(exchange.json()):
            await self._sighted(exchange, run)

    async def _sighted(self, exchange: Exchange, run: dict[str, Any]) -> None:
        run_id = run["id"]
        ended = is_terminal(run)
        if run_id in (self._ended if ended else self._seen):
            return
        prefix, query = api_context(exchange.path, exchange.query_string)
        await self._open_job(
            RunSighting(
                run,
                prefix,
                query,
                exchange.request_headers,
                exchange.upstream_headers,
                exchange.query_string,
                exchange.request_id,
                exchange.method == "POST" and exchange.path.endswith("/runs"),
            )
        )
        for seen in (self._seen, self._ended) if ended else (self._seen,):
            seen[run_id] = None
            if len(seen) > self._capacity:
                seen.popitem(last=False)


def _compressed(exchange: Exchange) -> bool:
    return bool(exchange.response_headers and exchange.response_headers.get("Content-Encoding"))
