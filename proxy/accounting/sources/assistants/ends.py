"""How a claimed run's job ends: its run recorded, in batches, in one transaction with the
deletion of the jobs; or the job retried with backoff; or, the database being down, left
claimed until its lease runs out and any replica takes it again. The collector (collector.py)
hands each job here once it is done with it, and is told when a job has left its hands."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.shielded import Shielded
from proxy.accounting.sources.assistants.collect import Failures
from proxy.accounting.sources.assistants.rows import RunRow
from proxy.accounting.usage import UsageRecorded, UsageSink
from proxy.db import jobs, run_usage
from proxy.db.errors import DB_ERRORS, is_unavailable

__all__ = ["RunEnds"]

_log = logging.getLogger("proxy.accounting.collector")

# Runs per recording transaction; more finished meanwhile wait for the next one. A batch's
# parameters are processed on the event loop in one go, so a cap bounds that stretch (at 100
# rows a transaction costs a row's worth, bench/db_ops.py).
_RECORD_BATCH = 100

Finished = list[tuple[jobs.ClaimedJob, RunRow]]


class RunEnds:
    def __init__(
        self,
        sm: Callable[[], async_sessionmaker[AsyncSession]],
        worker: str,
        recorded: UsageSink,
        failed: Failures,
        db: Shielded,
        *,
        retry_base: float,
        max_backoff: float,
        on_settled: Callable[[list[int]], None],
    ) -> None:
        self._sm = sm
        self._worker = worker
        self._recorded = recorded
        self._failed = failed
        self._db = db
        self._retry_base = retry_base
        self._max_backoff = max_backoff
        self._on_settled = on_settled
        self._finished: Finished = []  # to record
        self._finish = asyncio.Event()

    def finished(self, job: jobs.ClaimedJob, built: RunRow) -> None:
        """A run ready to record: it goes in the next batch."""
        self._finished.append((job, built))
        self._finish.set()

    def take_finished(self) -> Finished:
        """The runs not yet recorded, taken out of the batches (at stop)."""
        finished, self._finished = self._finished, []
        return finished

    async def run(self) -> None:
        """Record the finished runs, a batch at a time, until cancelled."""
        while True:
            if not self._finished:
                self._finish.clear()
                await self._finish.wait()
                continue
            batch, self._finished = self._finished[:_RECORD_BATCH], self._finished[_RECORD_BATCH:]
            # Shielded, and its bookkeeping inside: stop() cancelling this task cannot leave
            # a batch written but still counted as held.
            await self._db(self.record(batch))

    async def record(self, batch: Finished) -> None:
        """Record the runs and delete their jobs, in one transaction; should the database
        refuse the batch, run by run, so that a row it refuses costs only its own job."""
        try:
            await self._write(batch)
        except DB_ERRORS as exc:
            if is_unavailable(exc):
                await self.db_failed([job for job, _ in batch], exc)
            else:
                await self._record_each(batch)
        except Exception:
            _log.exception("recording %d runs failed; recording them one by one", len(batch))
            await self._record_each(batch)
        finally:
            self._on_settled([job.id for job, _ in batch])

    async def _record_each(self, batch: Finished) -> None:
        for i, (job, built) in enumerate(batch):
            try:
                await self._write([(job, built)])
            except DB_ERRORS as exc:
                if is_unavailable(exc):
                    await self.db_failed([j for j, _ in batch[i:]], exc)
                    return
                await self.db_failed([job], exc)
            except Exception as exc:
                self._failed("internal", 1)
                _log.exception("recording run %s failed", job.object_id)
                await self.retry(job, f"internal error: {type(exc).__name__}", None)

    async def _write(self, batch: Finished) -> None:
        done = functools.partial(
            jobs.complete_held, job_ids=[job.id for job, _ in batch], worker=self._worker
        )
        stored = await run_usage.record_usage_many(
            self._sm(), [built for _, built in batch], also=done
        )
        # Signalled as stored: a run's sessions and their cost are settled in the transaction.
        rows = [
            dataclasses.replace(
                built.row,
                code_interpreter_sessions=s.code_interpreter_sessions,
                cost_usd=s.cost_usd,
            )
            for (_, built), s in zip(batch, stored, strict=True)
            if s is not None
        ]
        # Per batch, not per run: in a collector process each signal is a line to the serving
        # process, which reads them on the loop that forwards requests.
        if rows:
            self._recorded(UsageRecorded.of(rows))

    async def db_failed(self, held: list[jobs.ClaimedJob], exc: BaseException) -> None:
        """The database failed the jobs: unreachable, they wait out their leases; refused,
        they are retried with backoff."""
        if is_unavailable(exc):
            # The jobs stay claimed until their lease ends, then any replica takes them again.
            self._failed("database", len(held))
            _log.warning("recording %d run(s) failed: %s", len(held), type(exc).__name__)
            return
        # Refused, not unreachable: retrying at once cannot help, so back off and log.
        for job in held:
            self._failed("database_refused", 1)
            _log.error("the database refused run %s: %s", job.object_id, type(exc).__name__)
            await self.retry(job, f"database refused the row: {type(exc).__name__}", None)

    async def retry(self, job: jobs.ClaimedJob, error: str, retry_after: float | None) -> None:
        """Give the job back, due again after a backoff (or the upstream's Retry-After)."""
        delay = jobs.backoff(
            job.attempts + 1, base=self._retry_base, cap=self._max_backoff, retry_after=retry_after
        )
        with contextlib.suppress(*DB_ERRORS):
            await self._db(jobs.retry(self._sm(), job.id, self._worker, error=error, delay=delay))
