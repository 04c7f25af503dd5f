"""Run creates on a thread (POST .../threads/{id}/runs), guarded at both ends
(proxy.forwarding.holds):

- before one is forwarded (streamed or not), an intent is written (proxy.db.run_intents):
  should the replica die before the run's job is stored (its answer lost with it, or answered
  and never polled), the collector finds the run by listing the thread (intents.py). The run's
  job deletes the intent in its transaction.
- the answer to a non-streamed one is held until its job is stored
  (proxy.accounting.writing.stored releases it), so a client never holds a run id the
  database does not know, even when its intent could not be written in time.

Streamed creates are not held: their job is queued at `thread.run.created`, and the stream's
last bytes come after its other events, which the client has read by then; a held end would
protect nothing. Their intent covers them.

Create-and-run (POST .../threads/runs) names no thread in its path: its intent (thread_id
NULL, and the request's assistant_id) cannot be recovered by listing a thread. It is not held
either: holding its answer cannot save its run (a kill before the job is stored loses the run
whether the answer was on its way or held; only the client's error differs), while an answer
sent at once lets a client that polls the run show it to a replica again, whose job then
deletes the intent (proxy.db.unseen_creates.match). One left unmatched after its worker died is
counted unseen (unseen.py): the run may be unrecorded, and the operator is told.

Both waits are bounded by `hold_timeout` and fail open.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.attribution import Attribution
from proxy.accounting.sources.assistants.sightings import api_context
from proxy.db import run_intents
from proxy.db.errors import DB_ERRORS
from proxy.forwarding.exchange import Exchange

__all__ = ["RunCreates"]

_log = logging.getLogger("proxy.accounting.runs")

_ON_THREAD = re.compile(r"/threads/([^/]+)/runs\Z")
_AND_RUN = "/threads/runs"
_MAX_ASSISTANT_ID = 255  # the column's width
_CAPACITY = 10_000  # intents of requests in flight: far more than a replica has at once

Attribute = Callable[..., Awaitable[Attribution]]


def _is_create(exchange: Exchange) -> bool:
    return exchange.method == "POST" and exchange.path.endswith("/runs")


class RunCreates:
    """A Holder (run creates' answers, and their intents before), and an observer: an intent
    whose create made no run is deleted when the exchange ends."""

    def __init__(
        self,
        sm: Callable[[], async_sessionmaker[AsyncSession]],
        attribute: Attribute,
        remember_key: Callable[[Mapping[str, str], str], None],
        worker: str,
    ) -> None:
        self._sm = sm
        self._attribute = attribute
        self._remember_key = remember_key
        self.worker = worker
        self._intents: OrderedDict[str, int] = OrderedDict()  # request id -> intent id
        self._resolving: set[asyncio.Task[None]] = set()

    # --- the holder -------------------------------------------------------------------------
    def before(self, exchange: Exchange) -> Awaitable[None] | None:
        """Asked of every request: a run create gets its intent written."""
        if not _is_create(exchange) or exchange.upstream_headers is None:
            return None
        found = _ON_THREAD.search(exchange.path)
        if found is not None:
            return self._intend(exchange, found.group(1))
        if exchange.path.endswith(_AND_RUN):
            return self._intend(exchange, None)
        return None

    async def _intend(self, exchange: Exchange, thread_id: str | None) -> None:
        sent = exchange.upstream_headers
        assert sent is not None
        # The key in memory now: the collector recovers an intent with it.
        self._remember_key(sent, exchange.query_string)
        who = await self._attribute(sent, exchange.request_headers, query=exchange.query_string)
        prefix, query = api_context(exchange.path, exchange.query_string)
        intent = run_intents.NewIntent(
            thread_id=thread_id,
            api_prefix=prefix,
            api_query=query,
            worker=self.worker,
            assistant_id=None if thread_id else _assistant_of(exchange),
            **who.columns(),
        )
        try:
            intent_id = await run_intents.add(self._sm(), intent)
        except DB_ERRORS as exc:
            # Fail open: the create goes on, without its guard.
            _log.warning("cannot write a run intent: %s", type(exc).__name__)
            return
        self._intents[exchange.request_id] = intent_id
        while len(self._intents) > _CAPACITY:
            self._intents.popitem(last=False)

    async def hold(self, exchange: Exchange) -> bool:
        status = exchange.status
        if status is None or not 200 <= status < 300 or not _is_create(exchange):
            return False
        if exchange.content_type != "application/json" or not _ON_THREAD.search(exchange.path):
            return False
        return exchange.raw_response_body.find(b"thread.run", 0, 4096) >= 0

    # --- intents ----------------------------------------------------------------------------
    def intent_of(self, request_id: str) -> int | None:
        """The intent written for this request, now the caller's to resolve (with its job)."""
        return self._intents.pop(request_id, None) if self._intents else None

    def on_response(self, exchange: Exchange) -> None:
        self._ended(exchange)

    def on_error(self, exchange: Exchange) -> None:
        self._ended(exchange)

    def _ended(self, exchange: Exchange) -> None:
        if not self._intents:
            return
        intent_id = self._intents.pop(exchange.request_id, None)
        if intent_id is not None:
            # No job took it: the create made no run (or none was seen).
            task = asyncio.create_task(self._resolve(intent_id))
            self._resolving.add(task)
            task.add_done_callback(self._resolving.discard)

    async def _resolve(self, intent_id: int) -> None:
        try:
            await run_intents.resolve(self._sm(), [intent_id])
        except DB_ERRORS as exc:
            # Left behind: the collector lists its thread later, which finds nothing new.
            _log.warning("cannot delete a run intent: %s", type(exc).__name__)


def _assistant_of(exchange: Exchange) -> str | None:
    """The create-and-run's assistant, when its body was read before forwarding (small: it
    is, unless it carries a long thread) and names one. Parsed once: observers reuse it."""
    if not exchange.request_body:
        return None
    body = exchange.request_json()
    value = body.get("assistant_id") if isinstance(body, dict) else None
    return value[:_MAX_ASSISTANT_ID] if isinstance(value, str) else None
