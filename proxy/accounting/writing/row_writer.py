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

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.sources.events.containers import ContainerJob
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
        self._claims: OrderedDict[str, tuple[tuple[str, ...], ContainerJob]] = OrderedDict()
        self._resolve = resolve_teams
        self._recorded = recorded

    def start(self, name: str = "usage-row-writer") -> None:
        super().start(name)

    def containers(self, response_id: str, containers: tuple[str, ...], job: ContainerJob) -> None:
        """The code interpreter containers of a response row submitted next: when it is
        written, the row claims each container, on any replica (proxy.db.containers), and
        each container it is the first to claim gets a collection job, which prices the
        session once it is over (proxy.accounting.sources.events.container_collector)."""
        self._claims[response_id] = (containers, job)
        self._claims.move_to_end(response_id)
        while len(self._claims) > _MAX_CLAIMS:  # rows dropped from the backlog leave these
            self._claims.popitem(last=False)

    async def _claim(self, batch: Rows) -> None:
        """Claims the containers of the batch's response rows (teams resolved: the jobs keep
        them) and queues the jobs of the containers they own."""
        mine = [r for r in batch if r.object_id in self._claims and r.kind == RESPONSE_KIND]
        if not mine:
            return
        wanted: dict[str, str] = {}
        new_jobs: dict[str, dict[str, object]] = {}
        for row in mine:
            containers, job = self._claims[row.object_id]
            for container in containers:
                wanted.setdefault(container, row.object_id)
                new_jobs.setdefault(container, job.values(row))
        await claim_containers(self._sm(), wanted, new_jobs)

    async def _record(self, batch: Rows) -> None:
        batch = await self._resolve(batch)
        # Before the rows: a row written is never claimed again (its claims are dropped).
        await self._claim(batch)
        written = await db_usage.record_rows(self._sm(), batch)
        for row in batch:
            self._claims.pop(row.object_id, None)
        if written:
            # After the commit: what subscribers are told is in the database.
            self._recorded(UsageRecorded.of(written))
