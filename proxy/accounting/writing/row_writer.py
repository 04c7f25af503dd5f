"""Write-behind for usage rows (responses, chat completions, embeddings): observers hand rows
over and go on; proxy.accounting.writing.write_behind writes them in batches, with one multi-row
INSERT (db_usage.record_rows) each, and keeps them while the database is down.

A transaction per row costs ~1 ms of event-loop CPU, so writing each row as it is observed
capped recording at ~600 rows/s (bench/README.md, finding 1). A batch short of `batch` rows
waits up to `gather` seconds for more: a transaction costs as much as dozens of rows in it,
and without the wait a proxy with a few clients wrote one or two rows per transaction. 0.1 s:
about 100 rows per transaction at 1,000 requests/s, and rows reach the table a tenth of a
second later, which no report can tell.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.usage import UsageRecorded, UsageRow, UsageSink
from proxy.accounting.writing.write_behind import WriteBehind
from proxy.db import usage as db_usage
from proxy.db.containers import claim_containers
from proxy.metrics import Metrics

__all__ = ["RowWriter"]

_log = logging.getLogger("proxy.accounting.rows")

Rows = list[UsageRow]
RESPONSE_KIND = "response"
_MAX_CLAIMS = 100_000


class RowWriter(WriteBehind[UsageRow]):
    def __init__(
        self,
        sessionmaker: Callable[[], async_sessionmaker[AsyncSession]],
        metrics: Metrics,
        *,
        resolve_teams: Callable[[Sequence[UsageRow]], Awaitable[Rows]],
        recorded: UsageSink,
        batch: int = 256,  # measured: 100-500 rows per transaction, PostgreSQL best near 100
        gather: float = 0.1,
        limit: int = 100_000,
        retry_base: float = 0.5,
        max_backoff: float = 30.0,
        on_pending: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(
            self._record,
            metrics,
            noun="usage rows",
            describe=lambda row: f"usage row {row.kind} {row.object_id}",
            log=_log,
            batch=batch,
            gather=gather,
            limit=limit,
            retry_base=retry_base,
            max_backoff=max_backoff,
            on_pending=on_pending,
        )
        self._sm = sessionmaker
        self._claims: OrderedDict[str, tuple[tuple[str, ...], Decimal | None]] = OrderedDict()
        self._resolve = resolve_teams
        self._recorded = recorded

    def start(self, name: str = "usage-row-writer") -> None:
        super().start(name)

    def containers(
        self, response_id: str, containers: tuple[str, ...], session_price: Decimal | None
    ) -> None:
        """The code interpreter containers of a response row submitted next, and the price of
        a session of them: the row is charged a session for each container it is the first
        to claim, on any replica (proxy.db.containers), when it is written."""
        self._claims[response_id] = (containers, session_price)
        self._claims.move_to_end(response_id)
        while len(self._claims) > _MAX_CLAIMS:  # rows dropped from the backlog leave these
            self._claims.popitem(last=False)

    async def _claimed(self, batch: Rows) -> Rows:
        """The batch with each response row charged the sessions of the containers it owns."""
        mine = [r for r in batch if r.object_id in self._claims and r.kind == RESPONSE_KIND]
        if not mine:
            return batch
        wanted = {c: r.object_id for r in mine for c in self._claims[r.object_id][0]}
        owners = await claim_containers(self._sm(), wanted)
        charged: dict[int, UsageRow] = {}
        for row in mine:
            containers, price = self._claims[row.object_id]
            owned = sum(owners.get(c) == row.object_id for c in containers)
            if not owned:
                continue
            cost = row.cost_usd
            # No session price in force: the row is unpriced, never a silent 0.
            cost = None if cost is None or price is None else cost + owned * price
            charged[id(row)] = dataclasses.replace(
                row,
                code_interpreter_sessions=row.code_interpreter_sessions + owned,
                cost_usd=cost,
            )
        return [charged.get(id(r), r) for r in batch]

    async def _record(self, batch: Rows) -> None:
        batch = await self._claimed(batch)
        written = await db_usage.record_rows(self._sm(), await self._resolve(batch))
        for row in batch:
            self._claims.pop(row.object_id, None)
        if written:
            # After the commit: what subscribers are told is in the database.
            self._recorded(UsageRecorded.of(written))
