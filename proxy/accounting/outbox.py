"""Write-behind for collection jobs (the outbox): observers hand sightings over and go on; one
task inserts them.

A transaction per sighting, on the dispatcher's task, capped the runs observed at ~240/s
(bench/README.md, finding 2). The task here inserts whatever has accumulated since its last
transaction, up to `batch` jobs, with one multi-row INSERT ... ON CONFLICT (run_id) DO NOTHING
(jobs.enqueue_many). No timer: a job is written as soon as the previous transaction ends, so
the outbox holds it within a transaction's time of its sighting; under load, jobs gather while
the previous transaction runs.

Failures (fail open: the client's traffic never waits on this):
- The database is unreachable (proxy.db.errors.is_unavailable): the jobs stay in memory, up
  to `limit` (beyond that the oldest are dropped and counted as "backlog_full"), in order, and
  the write is retried with a doubling delay, or at once on `retry_now`. They are lost only if
  the process stops before the database is back; a client polling the run again re-creates
  its job then.
- The database refused the batch: it is written again job by job, so only the job it refuses
  is dropped (counted as "database_refused"), not its neighbours.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db import jobs
from proxy.db.errors import DB_ERRORS, is_unavailable
from proxy.metrics import Metrics

__all__ = ["JobWriter"]

_log = logging.getLogger("proxy.accounting.outbox")


class JobWriter:
    def __init__(
        self,
        sessionmaker: Callable[[], async_sessionmaker[AsyncSession]],
        metrics: Metrics,
        *,
        # A batch's parameters are processed on the event loop in one go: 100 bounds that
        # stretch, and the transaction is then already a small share (bench/db_ops.py).
        batch: int = 100,
        limit: int = 100_000,
        retry_base: float = 0.25,
        max_backoff: float = 5.0,
        on_written: Callable[[], None] | None = None,
        on_pending: Callable[[int], None] | None = None,
    ) -> None:
        self._sm = sessionmaker
        self._metrics = metrics
        self._batch = batch
        self._limit = limit
        self._retry_base = retry_base
        self._max_backoff = max_backoff
        self._on_written = on_written
        self._on_pending = on_pending
        self._pending: collections.deque[jobs.NewJob] = collections.deque()
        self._wake = asyncio.Event()
        self._retry = asyncio.Event()
        self._stopping = False
        self._dropped = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Jobs submitted and not written yet."""
        return len(self._pending)

    def submit(self, job: jobs.NewJob) -> None:
        """Queue a job for writing. Never blocks and never raises."""
        if len(self._pending) >= self._limit:
            self._drop_oldest(1)
        self._pending.append(job)
        self._wake.set()

    def retry_now(self) -> None:
        """The database may be back: end the current backoff wait, if any."""
        if self._pending:
            self._retry.set()

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="collection-job-writer")

    async def stop(self) -> None:
        """Write everything submitted so far, then end. If the database is unreachable at that
        moment, what is left is logged as lost rather than holding up shutdown."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        self._retry.set()
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
                self._wake.clear()
                await self._wake.wait()
                continue
            n = min(len(self._pending), self._batch)
            batch = [self._pending.popleft() for _ in range(n)]
            try:
                kept = await self._flush(batch)
            except Exception:
                # A bug, not the database: losing this batch beats losing the writer.
                _log.exception("cannot write %d collection jobs; they are dropped", len(batch))
                kept = []
            if not kept:
                delay = self._retry_base
                self._report()
                continue
            # Back in front, so jobs keep their order across an outage.
            self._pending.extendleft(reversed(kept))
            if len(self._pending) > self._limit:
                self._drop_oldest(len(self._pending) - self._limit)
            self._report()
            if self._stopping:
                _log.error(
                    "stopping while the database is unreachable: %d collection jobs are lost",
                    len(self._pending),
                )
                self._pending.clear()
                self._report()
                return
            self._retry.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._retry.wait()
            delay = min(delay * 2, self._max_backoff)

    async def _flush(self, batch: list[jobs.NewJob]) -> list[jobs.NewJob]:
        """Write the batch; the jobs to keep for a retry (the database was unreachable)."""
        try:
            await jobs.enqueue_many(self._sm(), batch)
            self._written()
            return []
        except Exception as exc:
            # Not only DB_ERRORS: a value the driver cannot encode must cost its own job.
            if isinstance(exc, DB_ERRORS) and is_unavailable(exc):
                _log.warning(
                    "database write failed (%s); %d collection jobs kept in memory",
                    type(exc).__name__,
                    len(batch) + len(self._pending),
                )
                return batch
            _log.warning(
                "the database refused a batch of jobs (%s); writing it job by job",
                type(exc).__name__,
            )
        for i, job in enumerate(batch):
            try:
                await jobs.enqueue_many(self._sm(), [job])
                self._written()
            except Exception as exc:
                if isinstance(exc, DB_ERRORS) and is_unavailable(exc):
                    return batch[i:]
                # Retrying a job the database refuses can never succeed; keeping it would
                # hold up every job behind it.
                self._metrics.collection_failures.labels(reason="database_refused").inc()
                _log.error(
                    "the database refused the job of run %s, which is dropped: %s",
                    job.run_id,
                    type(exc).__name__,
                )
        return []

    def _written(self) -> None:
        if self._on_written is not None:
            self._on_written()

    def _drop_oldest(self, n: int) -> None:
        for _ in range(n):
            self._pending.popleft()
        self._metrics.collection_failures.labels(reason="backlog_full").inc(n)
        before, self._dropped = self._dropped, self._dropped + n
        # Once per 10,000 drops: a full backlog during an outage drops a job per sighting.
        if before == 0 or before // 10_000 != self._dropped // 10_000:
            _log.error(
                "collection job backlog full (%d jobs); %d dropped so far, oldest first",
                self._limit,
                self._dropped,
            )

    def _report(self) -> None:
        if self._on_pending is not None:
            self._on_pending(len(self._pending))
