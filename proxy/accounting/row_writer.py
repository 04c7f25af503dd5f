"""Write-behind for usage rows: observers hand rows over and go on; one task writes them.

A transaction per row costs ~1 ms of event-loop CPU, so writing each row as it is observed
caps recording at ~600 rows/s (bench/README.md, finding 1). The task here writes whatever has
accumulated since its last transaction, up to `batch` rows, with one multi-row INSERT
(records.record_rows). A batch short of `batch` rows waits up to `gather` seconds for more:
a transaction costs as much as ~30 rows in it, and without the wait a proxy with a few
clients wrote one or two rows per transaction (bench/README.md). drain() and stop() cut the
wait short.

Failures:
- The database is unreachable (proxy.db.errors.is_unavailable): the rows stay in memory, up
  to `limit` (beyond that the oldest are dropped and counted as "backlog_full"), and the
  flush is retried with a doubling delay.
- The database refused the batch: it is written again row by row, so only the row it refuses
  is dropped (counted as "database_refused"), not its neighbours.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db import records
from proxy.db.errors import DB_ERRORS, is_unavailable
from proxy.metrics import Metrics

__all__ = ["RowWriter"]

_log = logging.getLogger("proxy.accounting.rows")

Rows = list[records.UsageRow]


class RowWriter:
    def __init__(
        self,
        sessionmaker: Callable[[], async_sessionmaker[AsyncSession]],
        metrics: Metrics,
        *,
        resolve_teams: Callable[[Sequence[records.UsageRow]], Awaitable[Rows]],
        batch: int = 256,  # measured: 100-500 rows per transaction, PostgreSQL best near 100
        gather: float = 0.05,
        limit: int = 100_000,
        retry_base: float = 0.5,
        max_backoff: float = 30.0,
        on_pending: Callable[[int], None] | None = None,
    ) -> None:
        self._sm = sessionmaker
        self._metrics = metrics
        self._resolve = resolve_teams
        self._batch = batch
        self._gather = gather
        self._limit = limit
        self._retry_base = retry_base
        self._max_backoff = max_backoff
        self._on_pending = on_pending
        self._pending: collections.deque[records.UsageRow] = collections.deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._hurry = False
        self._stopping = False
        self._dropped = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Rows submitted and not written yet."""
        return len(self._pending)

    def submit(self, row: records.UsageRow) -> None:
        """Queue a row for writing. Never blocks and never raises: the caller is an observer,
        and the client's traffic must not wait on accounting."""
        if len(self._pending) >= self._limit:
            self._drop_oldest(1)
        pending = self._pending
        pending.append(row)
        # Woken for the first row and for a full batch; rows in between only gather.
        if len(pending) == 1 or len(pending) >= self._batch:
            self._idle.clear()
            self._wake.set()

    async def drain(self, timeout: float = 10.0) -> None:
        """Write what was submitted so far, without the gather wait, and return once it is
        written (or dropped), or after `timeout` seconds."""
        self._hurry = True
        self._wake.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout)
        finally:
            self._hurry = False

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="usage-row-writer")

    async def stop(self) -> None:
        """Write everything submitted so far, then end. If the database is unreachable at
        that moment, what is left is logged as lost rather than holding up shutdown."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await self._task
        finally:
            self._task = None

    # --- the task ------------------------------------------------------------------------
    async def _run(self) -> None:
        delay = self._retry_base
        while True:
            if not self._pending:
                if self._stopping:
                    return
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._gather > 0 and not self._full():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._gathered(), self._gather)
            n = min(len(self._pending), self._batch)
            batch = [self._pending.popleft() for _ in range(n)]
            try:
                kept = await self._flush(batch)
            except Exception:
                # A bug, not the database: losing this batch beats losing the writer.
                _log.exception("cannot write %d usage rows; they are dropped", len(batch))
                kept = []
            if not kept:
                delay = self._retry_base
                self._report()
                continue
            # Back in front, so rows keep their order across an outage.
            self._pending.extendleft(reversed(kept))
            if len(self._pending) > self._limit:
                self._drop_oldest(len(self._pending) - self._limit)
            self._report()
            if self._stopping:
                _log.error(
                    "stopping while the database is unreachable: %d usage rows are lost",
                    len(self._pending),
                )
                self._pending.clear()
                self._report()
                return
            # Woken early by stop(), so shutdown does not wait out the backoff.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped(), delay)
            delay = min(delay * 2, self._max_backoff)

    def _full(self) -> bool:
        return self._stopping or self._hurry or len(self._pending) >= self._batch

    async def _gathered(self) -> None:
        while not self._full():
            self._wake.clear()
            await self._wake.wait()

    async def _stopped(self) -> None:
        while not self._stopping:
            self._wake.clear()
            await self._wake.wait()

    async def _flush(self, batch: Rows) -> Rows:
        """Write the batch; the rows to keep for a retry (the database was unreachable)."""
        try:
            self._recorded(await records.record_rows(self._sm(), await self._resolve(batch)))
            return []
        except Exception as exc:
            # Not only DB_ERRORS: a value the driver cannot encode (sqlite3 raises
            # OverflowError for a huge int) must cost its own row, not the batch.
            if isinstance(exc, DB_ERRORS) and is_unavailable(exc):
                _log.warning(
                    "database write failed (%s); %d usage rows kept in memory",
                    type(exc).__name__,
                    len(batch) + len(self._pending),
                )
                return batch
            _log.warning(
                "the database refused a batch (%s); writing it row by row", type(exc).__name__
            )
        for i, row in enumerate(batch):
            try:
                self._recorded(await records.record_rows(self._sm(), await self._resolve([row])))
            except Exception as exc:
                if isinstance(exc, DB_ERRORS) and is_unavailable(exc):
                    return batch[i:]
                self._refused(row, exc)
        return []

    def _recorded(self, rows: Rows) -> None:
        m = self._metrics
        for row in rows:
            m.recorded(row.kind)
            m.usage(row.team, row.model, row.prompt_tokens, row.completion_tokens, row.cost_usd)

    def _refused(self, row: records.UsageRow, exc: BaseException) -> None:
        # Retrying a row the database refuses can never succeed; keeping it would hold up
        # every row behind it.
        self._metrics.collection_failures.labels(reason="database_refused").inc()
        _log.error(
            "the database refused usage row %s %s, which is dropped: %s",
            row.kind,
            row.object_id,
            type(exc).__name__,
        )

    def _drop_oldest(self, n: int) -> None:
        for _ in range(n):
            self._pending.popleft()
        self._metrics.collection_failures.labels(reason="backlog_full").inc(n)
        before, self._dropped = self._dropped, self._dropped + n
        # Once per 10,000 drops: a full backlog during an outage drops a row per request.
        if before == 0 or before // 10_000 != self._dropped // 10_000:
            _log.error(
                "usage row backlog full (%d rows); %d dropped so far, oldest first",
                self._limit,
                self._dropped,
            )

    def _report(self) -> None:
        if self._on_pending is not None:
            self._on_pending(len(self._pending))
