"""The collector: claims the jobs of its source (Assistants runs) from the jobs table, has each
one's row built (collect.py: followed while in progress, fetched with the client's own
credentials, estimated, priced) and has them recorded exactly once (ends.py: in batches with
the deletion of their jobs). Nothing here but the construction knows the source: it asks
collect.py for the source's kind.

Claims are short leases (`collector_lease`, 10 s by default), renewed every third of a lease
while the jobs are held, so a replica that dies leaves its jobs free within a lease on any
host. On its own host it does better: at start and every lease, the collector frees the claims
of workers of this host that are certainly dead (proxy.accounting.process.owners), so a
restarted proxy takes over its predecessor's jobs at once. Beside the claims, it recovers run
intents left behind by dead workers (intents.py): run creates whose jobs were never written.

Failure handling (fail open for traffic, lose nothing for accounting): a database that is down
leaves the job claimed, and its lease runs out and it is claimed again; an unexpected error is
logged and retried like a fetch failure (see collect.py for those). None of this is ever
visible to a client: the collector runs on its own tasks.

Shutdown: database operations run to their end (proxy.accounting.shielded). Jobs still held
are then given back, so another replica (or the next start) takes them at
once instead of after their lease.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import os
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.estimate.constants import ConstantsTable
from proxy.accounting.pricing import PriceTable
from proxy.accounting.process.owners import worker_id
from proxy.accounting.shielded import Shielded
from proxy.accounting.sources.assistants.collect import WAIT, Failures, Follow, Retry, RunCollect
from proxy.accounting.sources.assistants.ends import RunEnds
from proxy.accounting.sources.assistants.fetch import RunFetcher
from proxy.accounting.sources.assistants.intents import IntentRecovery
from proxy.accounting.sources.assistants.rows import RunRow
from proxy.accounting.sources.leases import Leases
from proxy.accounting.usage import UsageSink
from proxy.db import jobs
from proxy.db import usage as db_usage
from proxy.db.errors import DB_ERRORS
from proxy.db.models import utcnow
from proxy.keys import CredentialStore
from proxy.settings import Settings

__all__ = ["DB_ERRORS", "RunCollector"]

_log = logging.getLogger("proxy.accounting.collector")

_STOP_TIMEOUT = 10.0


class RunCollector:
    """Background worker(s) of one process. Several processes may share one database: the
    claim (FOR UPDATE SKIP LOCKED, or SQLite's single writer) keeps them off each other's jobs,
    and the usage row's unique key keeps a run from being counted twice.

    A pipeline, each stage batched where the database is involved: the loop claims up to
    `claim_size` due jobs in one transaction; at most `workers` of them are fetched and
    estimated at a time; finished runs are recorded together, in one transaction with the
    deletion of their jobs (whatever finished while the previous transaction ran).
    """

    def __init__(
        self,
        sm: Callable[[], async_sessionmaker[AsyncSession]],
        fetcher: RunFetcher,
        credentials: CredentialStore,
        prices: PriceTable,
        constants: ConstantsTable,
        recorded: UsageSink,
        failed: Failures,
        *,
        workers: int = 2,
        claim_size: int = 100,
        poll_interval: float = 1.0,
        lease: float = 10.0,
        reported_wait: float = 600.0,
        max_backoff: float = 300.0,
        retry_base: float = 1.0,
        max_attempts: int = 20,
    ) -> None:
        self._sm = sm
        self._credentials = credentials
        self._fetcher = fetcher
        self._collect = RunCollect(
            sm, fetcher, credentials, prices, constants, failed, max_attempts=max_attempts
        )
        self._failed = failed
        self._workers = workers
        self._claim_size = claim_size
        self._poll = poll_interval
        self._lease = lease
        self._reported_wait = reported_wait
        self._max_attempts = max_attempts
        self.worker_id = worker_id(os.urandom(3).hex())
        self._wake = asyncio.Event()
        # Every job this worker holds, until it is recorded, retried or given back.
        self._held: dict[int, jobs.ClaimedJob] = {}
        self._queue: collections.deque[int] = collections.deque()  # held, not fetched yet
        self._busy: set[asyncio.Task[None]] = set()  # fetches, at most `workers`
        self._db = Shielded()  # see proxy.accounting.shielded; stop() waits for them
        self._ends = RunEnds(
            sm,
            self.worker_id,
            recorded,
            failed,
            self._db,
            retry_base=retry_base,
            max_backoff=max_backoff,
            on_settled=self._settled,
        )
        self._task: asyncio.Task[None] | None = None
        self._recorder: asyncio.Task[None] | None = None
        self._leases: asyncio.Task[None] | None = None
        self._intents: asyncio.Task[None] | None = None
        self._stopping = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        sm: Callable[[], async_sessionmaker[AsyncSession]],
        fetcher: RunFetcher,
        credentials: CredentialStore,
        prices: PriceTable,
        constants: ConstantsTable,
        recorded: UsageSink,
        failed: Failures,
    ) -> RunCollector:
        s = settings
        return cls(
            sm,
            fetcher,
            credentials,
            prices,
            constants,
            recorded,
            failed,
            workers=s.collector_workers,
            poll_interval=s.collector_poll_interval,
            lease=s.collector_lease,
            reported_wait=s.reported_usage_wait,
            max_backoff=s.collector_max_backoff,
            retry_base=s.collector_retry_base,
            max_attempts=s.collector_max_attempts,
        )

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def wake(self) -> None:
        """A job may be due now (a run just finished here): look without waiting for the poll."""
        self._wake.set()

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._loop(), name="run-collector")
        self._recorder = asyncio.create_task(self._ends.run(), name="run-recorder")
        leases = Leases(
            self._sm,
            lambda: self._held,
            self.worker_id,
            self._lease,
            self._db,
            on_freed=self._wake.set,
        )
        self._leases = asyncio.create_task(leases.run(), name="run-leases")
        recovery = IntentRecovery(
            self._sm,
            self._fetcher,
            self._credentials,
            self._db,
            every=max(self._poll, 0.1),
            lease=self._lease,
            on_opened=self._wake.set,
        )
        self._intents = asyncio.create_task(recovery.run(), name="run-intents")

    async def stop(self) -> None:
        """Stop claiming, abandon fetches in flight, let database operations finish, record
        the runs already fetched, and give back the jobs still held. Returns before the engine
        may be disposed of."""
        self._stopping = True
        for task in (self._task, self._recorder, self._leases, self._intents):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._recorder = self._leases = self._intents = None
        for task in list(self._busy):
            task.cancel()
        await asyncio.gather(*self._busy, return_exceptions=True)
        await self._db.wait(_STOP_TIMEOUT)
        finished = self._ends.take_finished()
        recording = {job.id for job, _ in finished}
        held = [job_id for job_id in self._held if job_id not in recording]
        self._held = {}
        self._queue.clear()
        try:
            async with asyncio.timeout(_STOP_TIMEOUT):
                if finished:
                    # Fetched already: recording them now spares the upstream a second fetch.
                    await self._ends.record(finished)
                await jobs.release_many(self._sm(), held, self.worker_id)
        except (*DB_ERRORS, TimeoutError) as exc:
            # Their leases run out instead: nothing is lost, it is only later.
            _log.warning("could not give back %d job(s): %s", len(held), type(exc).__name__)

    # --- claiming ------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            delay = self._poll
            try:
                limit = self._room()
                # The jobs are in hand within the same shielded operation: stop() cancelling
                # this loop mid-claim must still find them, to give them back.
                if limit > 0 and await self._db(self._claim(limit)) == limit:
                    delay = 0.0  # more may be due
            except asyncio.CancelledError:
                raise
            except DB_ERRORS as exc:
                # Database down: keep proxying, look again later; nothing is lost meanwhile.
                _log.warning("collector cannot reach the database: %s", type(exc).__name__)
                delay = max(self._poll, 1.0)
            except Exception:
                _log.exception("collector loop failed; retrying")
            if delay > 0:
                # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that arrives
                # as the wake-up does, and stop() would then wait for this loop forever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
            self._wake.clear()

    def _room(self) -> int:
        """How many jobs to claim now: none while the fetch slots have work and only a few
        would fit, since a claim costs a transaction however many jobs it takes."""
        room = self._claim_size - len(self._held)
        if room < max(self._claim_size // 4, 1) and self._queue:
            return 0
        return max(room, 0)

    async def _claim(self, limit: int) -> int:
        """Claim up to `limit` due jobs and take them in hand; how many were claimed."""
        claimed = await jobs.claim(
            self._sm(),
            worker=self.worker_id,
            fingerprints=self._credentials.fingerprints(),
            reported_wait=self._reported_wait,
            lease=self._lease,
            limit=limit,
            max_attempts=self._max_attempts,
            source=self._collect.kind,
        )
        fresh: list[jobs.ClaimedJob] = []
        for job in claimed:
            # Held already: its lease ran out and this worker claimed it again, so the copy
            # in hand goes on, with the new lease.
            if job.id not in self._held:
                fresh.append(job)
            self._held[job.id] = job
        if fresh:
            await self._take(fresh)
        return len(claimed)

    async def _take(self, fresh: list[jobs.ClaimedJob]) -> None:
        try:
            ids = [j.object_id for j in fresh]
            done = await self._db(db_usage.recorded(self._sm(), self._collect.kind, ids))
        except DB_ERRORS:
            # Cannot tell: fetch them; recording one twice is refused by its unique row.
            done = set()
        if done:
            # Seen again after it was recorded (after a restart, or by another replica): the
            # unique row would refuse it anyway, so spare the upstream the fetches.
            ids = [j.id for j in fresh if j.object_id in done]
            try:
                await self._db(jobs.complete_many(self._sm(), ids, self.worker_id))
            finally:
                for job_id in ids:
                    self._held.pop(job_id, None)
        self._queue.extend(j.id for j in fresh if j.object_id not in done)
        self._start_fetches()

    # --- fetching ------------------------------------------------------------------------
    def _start_fetches(self) -> None:
        if self._stopping:
            return  # also called back by the fetches that stop() cancels
        stale: list[int] = []
        # Half a lease left: another worker may take the job before this one is done with
        # it, so give it back now and claim it again with a new lease.
        soon = utcnow() + dt.timedelta(seconds=self._lease / 2)
        while self._queue and len(self._busy) < self._workers:
            job = self._held.get(self._queue.popleft())
            if job is None:
                continue
            if job.claimed_until < soon:
                stale.append(job.id)
                del self._held[job.id]
                continue
            task = asyncio.create_task(self._process(job))
            self._busy.add(task)
            task.add_done_callback(self._fetched)
        if stale:
            self._db.background(self._give_back(stale))
        if len(self._queue) < self._workers:
            self._wake.set()

    def _fetched(self, task: asyncio.Task[None]) -> None:
        self._busy.discard(task)
        self._start_fetches()

    async def _give_back(self, job_ids: list[int]) -> None:
        with contextlib.suppress(*DB_ERRORS):
            await jobs.release_many(self._sm(), job_ids, self.worker_id)

    async def _process(self, job: jobs.ClaimedJob) -> None:
        try:
            built = await self._collect(job, self._db)
            if isinstance(built, Retry):
                await self._ends.retry(job, built.error, built.retry_after)
                built = None
            elif built is WAIT:
                await self._db(jobs.release(self._sm(), job.id, self.worker_id))
                built = None
            elif isinstance(built, Follow):
                await self._db(
                    jobs.follow(
                        self._sm(),
                        job.id,
                        self.worker_id,
                        object_json=built.object_json,
                        delay=built.delay,
                    )
                )
                built = None
        except asyncio.CancelledError:
            raise  # stop() gives the job back
        except DB_ERRORS as exc:
            built = None
            await self._ends.db_failed([job], exc)
        except Exception as exc:
            built = None
            self._failed("internal", 1)
            _log.exception("collecting run %s failed", job.object_id)
            await self._ends.retry(job, f"internal error: {type(exc).__name__}", None)
        if not isinstance(built, RunRow):
            self._held.pop(job.id, None)
            return
        self._ends.finished(job, built)

    def _settled(self, job_ids: list[int]) -> None:
        for job_id in job_ids:
            self._held.pop(job_id, None)
        self._wake.set()
