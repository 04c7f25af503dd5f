"""Write-behind for collection jobs (the outbox): observers hand sightings over and go on;
proxy.accounting.writing.write_behind inserts them in batches, with one multi-row INSERT ...
ON CONFLICT (source, object_id) DO NOTHING (jobs.enqueue_many) each, and keeps them while the
database is down; `retry_now` ends a backoff wait early.

A transaction per sighting, on the dispatcher's task, capped the runs observed at ~240/s
(bench/README.md, finding 2). No gather wait: a job is written as soon as the previous
transaction ends, so the outbox holds it within a transaction's time of its sighting. Jobs
lost in an outage (the process stopped before the database came back) are re-created when a
client polls the run again.

A job opened from a sighting other than this worker's own create's answer (`seen_elsewhere`)
that this write really inserted may be a create-and-run's whose answer went out from a replica
that died before storing it: proxy.db.unseen_creates matches it with that create's intent, in
the same transaction, so the create is not counted unseen.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.writing.write_behind import WriteBehind
from proxy.db import jobs, run_intents, unseen_creates
from proxy.metrics import Metrics

__all__ = ["JobWriter", "OutboxJob"]

_log = logging.getLogger("proxy.accounting.outbox")


@dataclass(frozen=True, kw_only=True)
class OutboxJob(jobs.NewJob):
    """A job, and the run intent (proxy.db.run_intents) it resolves: deleted in its
    transaction. Not a column of the job."""

    intent: int | None = None
    # A sighting not of this worker's own create (a poll, a list, a stream of tool outputs):
    # the run as proxy.db.unseen_creates matches it, should this write insert its job.
    seen_elsewhere: unseen_creates.RunSeen | None = None


class JobWriter(WriteBehind[jobs.NewJob]):
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
        worker: str = "",
    ) -> None:
        super().__init__(
            self._enqueue,
            metrics,
            noun="collection jobs",
            describe=lambda job: f"the job of {job.source} {job.object_id}",
            log=_log,
            batch=batch,
            limit=limit,
            retry_base=retry_base,
            max_backoff=max_backoff,
            on_pending=on_pending,
        )
        self._sm = sessionmaker
        self._on_written = on_written
        self._worker = worker  # the serving process's, as in the intents it writes

    def start(self, name: str = "collection-job-writer") -> None:
        super().start(name)

    async def _enqueue(self, batch: list[jobs.NewJob]) -> None:
        intents = [j.intent for j in batch if isinstance(j, OutboxJob) and j.intent is not None]
        also = run_intents.resolved_by(intents) if intents else None
        elsewhere = {
            j.object_id: j.seen_elsewhere
            for j in batch
            if isinstance(j, OutboxJob) and j.seen_elsewhere is not None
        }
        matching = self._matching(elsewhere) if elsewhere else None
        await jobs.enqueue_many(self._sm(), batch, also=also, inserted=matching)
        if self._on_written is not None:
            self._on_written()

    def _matching(
        self, elsewhere: dict[str, unseen_creates.RunSeen]
    ) -> Callable[[AsyncSession, set[str]], Awaitable[object]]:
        async def match(session: AsyncSession, inserted: set[str]) -> None:
            # Only a job inserted now: one that existed had its create's answer (or another
            # sighting) write it, and that matched already.
            runs = [run for run_id, run in elsewhere.items() if run_id in inserted]
            if runs:
                await unseen_creates.match(session, runs, worker=self._worker)

        return match
