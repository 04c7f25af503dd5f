"""The collector: claims finished runs from the jobs table, fetches their steps and messages
with the client's own credentials, estimates, prices and records exactly one row per run.

Failure handling (fail open for traffic, lose nothing for accounting):
- a fetch that fails with 429/5xx/timeout is retried with backoff (429 honours retry-after);
- a fetch the upstream refuses for good (401/403/404) records what the run itself tells;
- a database that is down leaves the job claimed; its lease runs out and it is claimed again;
- an unexpected error in estimation is logged and retried like a fetch failure.
None of this is ever visible to a client: the collector runs on its own tasks.

Shutdown: database operations run to their end (shielded); a transaction cut off by
cancellation would leave its connection idle in transaction, holding row locks, outside the
pool. Jobs still held are then given back, so another replica (or the next start) takes them at
once instead of after their lease.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import functools
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.attribution import Attribution
from proxy.accounting.estimate.runs import EstimateConstants, RunEstimate, estimate_run
from proxy.accounting.estimate.tokenizer import counter_for_model
from proxy.accounting.fetch import RunFetcher
from proxy.accounting.pricing import PriceTable
from proxy.accounting.rows import RunRow, run_row
from proxy.db import jobs, records
from proxy.db.errors import DB_ERRORS, is_unavailable
from proxy.db.models import utcnow
from proxy.decode import parse_json
from proxy.errors import FetchError
from proxy.keys import CredentialStore, replay_request
from proxy.metrics import usage_sums
from proxy.settings import Settings

__all__ = ["DB_ERRORS", "CollectorMetrics", "RunCollector"]

_log = logging.getLogger("proxy.accounting.collector")

_KIND = "assistants.run"
_SCOPE_HEADERS = ("openai-project", "openai-organization", "openai-beta")
_ASSISTANTS_BETA = "assistants=v2"
_STOP_TIMEOUT = 10.0
# Runs per recording transaction; more finished meanwhile wait for the next one. A batch's
# parameters are processed on the event loop in one go, so a cap bounds that stretch (at 100
# rows a transaction costs a row's worth, bench/db_ops.py).
_RECORD_BATCH = 100
# Bytes of run, steps and messages up to which a run is estimated on the event loop (~0.1-0.3 ms
# of tokenizing at most); larger runs go to a thread.
_INLINE_ESTIMATE = 8192

_T = TypeVar("_T")


class CollectorMetrics(Protocol):
    """What the collector counts: proxy.metrics.Metrics in the serving process, and in a
    collector process a relay to it (proxy.accounting.collector_child)."""

    def run_recorded(self, source: str, n: int = 1) -> None: ...

    def collection_failed(self, reason: str, n: int = 1) -> None: ...

    def usage(
        self, team: str | None, model: str | None, prompt: int, completion: int, cost: Decimal
    ) -> None: ...


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
        constants: EstimateConstants,
        metrics: CollectorMetrics,
        *,
        workers: int = 2,
        claim_size: int = 100,
        poll_interval: float = 1.0,
        lease: float = 120.0,
        reported_wait: float = 600.0,
        max_backoff: float = 300.0,
        retry_base: float = 1.0,
        max_attempts: int = 20,
    ) -> None:
        self._sm = sm
        self._fetcher = fetcher
        self._credentials = credentials
        self._prices = prices
        self._constants = constants
        self._metrics = metrics
        self._workers = workers
        self._claim_size = claim_size
        self._poll = poll_interval
        self._lease = lease
        self._reported_wait = reported_wait
        self._max_backoff = max_backoff
        self._retry_base = retry_base
        self._max_attempts = max_attempts
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self._wake = asyncio.Event()
        # Every job this worker holds, until it is recorded, retried or given back.
        self._held: dict[int, jobs.ClaimedJob] = {}
        self._queue: collections.deque[int] = collections.deque()  # held, not fetched yet
        self._busy: set[asyncio.Task[None]] = set()  # fetches, at most `workers`
        self._finished: list[tuple[jobs.ClaimedJob, RunRow]] = []  # to record
        self._finish = asyncio.Event()
        self._db_ops: set[asyncio.Future[Any]] = set()
        self._task: asyncio.Task[None] | None = None
        self._recorder: asyncio.Task[None] | None = None
        self._stopping = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        sm: Callable[[], async_sessionmaker[AsyncSession]],
        fetcher: RunFetcher,
        credentials: CredentialStore,
        prices: PriceTable,
        constants: EstimateConstants,
        metrics: CollectorMetrics,
    ) -> RunCollector:
        s = settings
        return cls(
            sm,
            fetcher,
            credentials,
            prices,
            constants,
            metrics,
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
        self._recorder = asyncio.create_task(self._record_loop(), name="run-recorder")

    async def stop(self) -> None:
        """Stop claiming, abandon fetches in flight, let database operations finish, record
        the runs already fetched, and give back the jobs still held. Returns before the engine
        may be disposed of."""
        self._stopping = True
        for task in (self._task, self._recorder):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._recorder = None
        for task in list(self._busy):
            task.cancel()
        await asyncio.gather(*self._busy, return_exceptions=True)
        if self._db_ops:
            await asyncio.wait(self._db_ops, timeout=_STOP_TIMEOUT)
        finished, self._finished = self._finished, []
        recording = {job.id for job, _ in finished}
        held = [job_id for job_id in self._held if job_id not in recording]
        self._held = {}
        self._queue.clear()
        try:
            async with asyncio.timeout(_STOP_TIMEOUT):
                if finished:
                    # Fetched already: recording them now spares the upstream a second fetch.
                    await self._record(finished)
                await jobs.release_many(self._sm(), held, self.worker_id)
        except (*DB_ERRORS, TimeoutError) as exc:
            # Their leases run out instead: nothing is lost, it is only later.
            _log.warning("could not give back %d job(s): %s", len(held), type(exc).__name__)

    async def _db(self, op: Awaitable[_T]) -> _T:
        """Await a database operation that cancellation cannot cut off half-way (see the
        module docstring); `stop` waits for the ones still running."""
        future = asyncio.ensure_future(op)
        self._db_ops.add(future)
        future.add_done_callback(self._db_done)
        return await asyncio.shield(future)

    def _db_done(self, future: asyncio.Future[Any]) -> None:
        self._db_ops.discard(future)
        if not future.cancelled():
            # Retrieved here too: the caller may be gone (cancelled at shutdown).
            future.exception()

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
            done = await self._db(records.recorded(self._sm(), _KIND, [j.run_id for j in fresh]))
        except DB_ERRORS:
            # Cannot tell: fetch them; recording one twice is refused by its unique row.
            done = set()
        if done:
            # Seen again after it was recorded (after a restart, or by another replica): the
            # unique row would refuse it anyway, so spare the upstream the fetches.
            ids = [j.id for j in fresh if j.run_id in done]
            try:
                await self._db(jobs.complete_many(self._sm(), ids, self.worker_id))
            finally:
                for job_id in ids:
                    self._held.pop(job_id, None)
        self._queue.extend(j.id for j in fresh if j.run_id not in done)
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
            self._in_background(self._give_back(stale))
        if len(self._queue) < self._workers:
            self._wake.set()

    def _fetched(self, task: asyncio.Task[None]) -> None:
        self._busy.discard(task)
        self._start_fetches()

    def _in_background(self, op: Awaitable[object]) -> None:
        future = asyncio.ensure_future(op)
        self._db_ops.add(future)
        future.add_done_callback(self._db_done)

    async def _give_back(self, job_ids: list[int]) -> None:
        with contextlib.suppress(*DB_ERRORS):
            await jobs.release_many(self._sm(), job_ids, self.worker_id)

    async def _process(self, job: jobs.ClaimedJob) -> None:
        try:
            built = await self._collect(job)
        except asyncio.CancelledError:
            raise  # stop() gives the job back
        except DB_ERRORS as exc:
            built = None
            await self._db_failed([job], exc)
        except Exception as exc:
            built = None
            self._metrics.collection_failed("internal")
            _log.exception("collecting run %s failed", job.run_id)
            await self._retry(job, f"internal error: {type(exc).__name__}", None)
        if built is None:
            self._held.pop(job.id, None)
            return
        self._finished.append((job, built))
        self._finish.set()

    async def _collect(self, job: jobs.ClaimedJob) -> RunRow | None:
        """The run's row, or None when the job was retried or given back instead."""
        run = parse_json(job.run_json)
        gave_up = job.attempts >= self._max_attempts
        headers = self._credentials.get(job.key_fingerprint) if job.key_fingerprint else None
        estimate: RunEstimate | None = None
        if gave_up:
            # Retrying for ever would keep the job (and its cost) unrecorded for good.
            _log.warning(
                "run %s: %d attempts failed (last: %s); recording the run alone",
                job.run_id,
                job.attempts,
                job.last_error,
            )
            estimate = await self._estimate_from(run, [], [], len(job.run_json))
        elif headers is None:
            if not job.has_reported_usage:
                # The key expired since the claim (or lives in another replica): wait for it.
                await self._db(jobs.release(self._sm(), job.id, self.worker_id))
                return None
            _log.info("recording run %s from its reported usage alone (key not seen)", job.run_id)
        else:
            try:
                estimate = await self._estimate(job, run, _scoped(headers, job))
            except FetchError as exc:
                self._metrics.collection_failed(_reason(exc))
                if exc.retryable:
                    _log.warning("fetching run %s: %s; will retry", job.run_id, exc)
                    await self._retry(job, str(exc), exc.retry_after)
                    return None
                _log.warning("fetching run %s: %s; recording the run alone", job.run_id, exc)
                estimate = await self._estimate_from(run, [], [], len(job.run_json))
        team = job.team
        if team is None:
            # Not known when the run was seen (database down then): the mapping decides now.
            team = await self._db(
                records.team_for(self._sm(), fingerprint=job.key_fingerprint, project=job.project)
            )
        who = Attribution(
            job.key_fingerprint, job.key_hint, team, job.tag, job.project, job.organization
        )
        return run_row(run, who, estimate, self._prices, utcnow(), gave_up=gave_up)

    async def _estimate(
        self, job: jobs.ClaimedJob, run: dict[str, Any], headers: Mapping[str, str]
    ) -> RunEstimate:
        # The stored query has no credential: one that came in the query is replayed from
        # memory, as the headers are.
        headers, query = replay_request(headers, job.api_query)
        got = await self._fetcher.run(job.api_prefix, query, job.thread_id, job.run_id, headers)
        size = got.nbytes + len(job.run_json)
        return await self._estimate_from(run, got.steps, got.messages, size)

    async def _estimate_from(
        self,
        run: dict[str, Any],
        steps: list[dict[str, Any]],
        messages: list[dict[str, Any]],
        nbytes: int,
    ) -> RunEstimate:
        count = counter_for_model(run.get("model"))
        if nbytes <= _INLINE_ESTIMATE:
            # A typical run's estimate takes well under a millisecond: cheaper on the loop
            # than handing it to a thread, whose GIL hand-over can hold the loop up to the
            # switch interval (5 ms) when the loop is busy.
            return estimate_run(run, steps, messages, count, self._constants)
        # Much text: tokenizing is CPU work (tiktoken releases the GIL), off the event loop.
        return await asyncio.get_running_loop().run_in_executor(
            None, estimate_run, run, steps, messages, count, self._constants
        )

    # --- recording -----------------------------------------------------------------------
    async def _record_loop(self) -> None:
        while True:
            if not self._finished:
                self._finish.clear()
                await self._finish.wait()
                continue
            batch, self._finished = self._finished[:_RECORD_BATCH], self._finished[_RECORD_BATCH:]
            # Shielded, and its bookkeeping inside: stop() cancelling this task cannot leave
            # a batch written but still counted as held.
            await self._db(self._record(batch))

    async def _record(self, batch: list[tuple[jobs.ClaimedJob, RunRow]]) -> None:
        """Record the runs and delete their jobs, in one transaction; should the database
        refuse the batch, run by run, so that a row it refuses costs only its own job."""
        try:
            await self._write(batch)
        except DB_ERRORS as exc:
            if is_unavailable(exc):
                await self._db_failed([job for job, _ in batch], exc)
            else:
                await self._record_each(batch)
        except Exception:
            _log.exception("recording %d runs failed; recording them one by one", len(batch))
            await self._record_each(batch)
        finally:
            for job, _ in batch:
                self._held.pop(job.id, None)
            self._wake.set()

    async def _record_each(self, batch: list[tuple[jobs.ClaimedJob, RunRow]]) -> None:
        for i, (job, built) in enumerate(batch):
            try:
                await self._write([(job, built)])
            except DB_ERRORS as exc:
                if is_unavailable(exc):
                    await self._db_failed([j for j, _ in batch[i:]], exc)
                    return
                await self._db_failed([job], exc)
            except Exception as exc:
                self._metrics.collection_failed("internal")
                _log.exception("recording run %s failed", job.run_id)
                await self._retry(job, f"internal error: {type(exc).__name__}", None)

    async def _write(self, batch: list[tuple[jobs.ClaimedJob, RunRow]]) -> None:
        done = functools.partial(
            jobs.complete_held, job_ids=[job.id for job, _ in batch], worker=self.worker_id
        )
        inserted = await records.record_usage_many(
            self._sm(), [built for _, built in batch], also=done
        )
        rows = [built.row for (_, built), new in zip(batch, inserted, strict=True) if new]
        # Per batch, not per run: in a collector process each call is a line to the serving
        # process, which reads them on the loop that forwards requests.
        m = self._metrics
        for source, n in collections.Counter(row.usage_source for row in rows).items():
            m.run_recorded(source, n)
        for (team, model), (prompt, completion, cost) in usage_sums(rows).items():
            m.usage(team, model, prompt, completion, cost)

    async def _db_failed(self, held: list[jobs.ClaimedJob], exc: BaseException) -> None:
        if is_unavailable(exc):
            # The jobs stay claimed until their lease ends, then any replica takes them again.
            self._metrics.collection_failed("database", len(held))
            _log.warning("recording %d run(s) failed: %s", len(held), type(exc).__name__)
            return
        # Refused, not unreachable: retrying at once cannot help, so back off and log.
        for job in held:
            self._metrics.collection_failed("database_refused")
            _log.error("the database refused run %s: %s", job.run_id, type(exc).__name__)
            await self._retry(job, f"database refused the row: {type(exc).__name__}", None)

    async def _retry(self, job: jobs.ClaimedJob, error: str, retry_after: float | None) -> None:
        delay = jobs.backoff(
            job.attempts + 1, base=self._retry_base, cap=self._max_backoff, retry_after=retry_after
        )
        with contextlib.suppress(*DB_ERRORS):
            await self._db(jobs.retry(self._sm(), job.id, self.worker_id, error=error, delay=delay))


def _scoped(headers: Mapping[str, str], job: jobs.ClaimedJob) -> dict[str, str]:
    """The key's headers (from its latest request) fitted to this run: the project and
    organization of the request the run was seen in, since the latest one may have named
    another project, where the thread is unknown; and the Assistants beta header, which the
    latest request (say, a chat completion) may not have carried, and without which the API
    refuses the fetch."""
    scoped = {k: v for k, v in headers.items() if k.lower() not in _SCOPE_HEADERS}
    if job.project:
        scoped["OpenAI-Project"] = job.project
    if job.organization:
        scoped["OpenAI-Organization"] = job.organization
    beta = next((v for k, v in headers.items() if k.lower() == "openai-beta"), "")
    scoped["OpenAI-Beta"] = beta if "assistants=" in beta else _ASSISTANTS_BETA
    return scoped


def _reason(exc: FetchError) -> str:
    if exc.status is None:
        return "network"
    return "rate_limited" if exc.status == 429 else f"http_{exc.status // 100}xx"
