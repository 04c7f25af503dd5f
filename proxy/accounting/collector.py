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
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.attribution import Attribution
from proxy.accounting.estimate import EstimateConstants, RunEstimate, estimate_run
from proxy.accounting.fetch import RunFetcher
from proxy.accounting.pricing import PriceTable
from proxy.accounting.rows import run_row
from proxy.accounting.tokenizer import counter_for_model
from proxy.db import jobs, records
from proxy.db.engine import reading
from proxy.db.errors import DB_ERRORS, is_unavailable
from proxy.db.models import UsageRecord, utcnow
from proxy.errors import FetchError
from proxy.keys import CredentialStore
from proxy.metrics import Metrics

__all__ = ["DB_ERRORS", "RunCollector"]

_log = logging.getLogger("proxy.accounting.collector")

_KIND = "assistants.run"
_SCOPE_HEADERS = ("openai-project", "openai-organization", "openai-beta")
_ASSISTANTS_BETA = "assistants=v2"
_STOP_TIMEOUT = 10.0

_T = TypeVar("_T")


class RunCollector:
    """Background worker(s) of one process. Several processes may share one database: the
    claim (FOR UPDATE SKIP LOCKED, or SQLite's single writer) keeps them off each other's jobs,
    and the usage row's unique key keeps a run from being counted twice."""

    def __init__(
        self,
        sm: Callable[[], async_sessionmaker[AsyncSession]],
        fetcher: RunFetcher,
        credentials: CredentialStore,
        prices: PriceTable,
        constants: EstimateConstants,
        metrics: Metrics,
        *,
        workers: int = 2,
        poll_interval: float = 1.0,
        lease: float = 120.0,
        reported_wait: float = 600.0,
        max_backoff: float = 300.0,
        retry_base: float = 1.0,
        before_claim: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._sm = sm
        self._fetcher = fetcher
        self._credentials = credentials
        self._prices = prices
        self._constants = constants
        self._metrics = metrics
        self._workers = workers
        self._poll = poll_interval
        self._lease = lease
        self._reported_wait = reported_wait
        self._max_backoff = max_backoff
        self._retry_base = retry_base
        self._before_claim = before_claim
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self._wake = asyncio.Event()
        self._busy: set[asyncio.Task[None]] = set()
        self._held: dict[int, jobs.ClaimedJob] = {}
        self._db_ops: set[asyncio.Future[Any]] = set()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """A job may be due now (a run just finished here): look without waiting for the poll."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="run-collector")

    async def stop(self) -> None:
        """Stop claiming, abandon fetches in flight, let database operations finish, and give
        back the jobs still held. Returns before the engine may be disposed of."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._busy):
            task.cancel()
        await asyncio.gather(*self._busy, return_exceptions=True)
        if self._db_ops:
            await asyncio.wait(self._db_ops, timeout=_STOP_TIMEOUT)
        held, self._held = list(self._held.values()), {}
        try:
            async with asyncio.timeout(_STOP_TIMEOUT):
                for job in held:
                    await jobs.release(self._sm(), job.id, self.worker_id)
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

    async def _loop(self) -> None:
        while True:
            delay = self._poll
            try:
                if self._before_claim is not None:
                    await self._db(self._before_claim())
                free = self._workers - len(self._busy)
                claimed = await self._db(self._claim(free)) if free > 0 else []
                for job in claimed:
                    self._held[job.id] = job
                    task = asyncio.create_task(self._process(job))
                    self._busy.add(task)
                    task.add_done_callback(self._done)
                if claimed and len(claimed) == free:
                    delay = 0.0
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

    def _done(self, task: asyncio.Task[None]) -> None:
        self._busy.discard(task)
        self._wake.set()

    async def _claim(self, limit: int) -> list[jobs.ClaimedJob]:
        return await jobs.claim(
            self._sm(),
            worker=self.worker_id,
            fingerprints=self._credentials.fingerprints(),
            reported_wait=self._reported_wait,
            lease=self._lease,
            limit=limit,
        )

    async def _process(self, job: jobs.ClaimedJob) -> None:
        try:
            await self._collect(job)
        except asyncio.CancelledError:
            raise  # stop() gives the job back
        except DB_ERRORS as exc:
            if is_unavailable(exc):
                # The job stays claimed until its lease ends, then any replica takes it again.
                self._metrics.collection_failures.labels(reason="database").inc()
                _log.warning("recording run %s failed: %s", job.run_id, type(exc).__name__)
            else:
                # Refused, not unreachable: retrying at once cannot help, so back off and log.
                self._metrics.collection_failures.labels(reason="database_refused").inc()
                _log.error("the database refused run %s: %s", job.run_id, type(exc).__name__)
                await self._retry(job, f"database refused the row: {type(exc).__name__}", None)
        except Exception as exc:
            self._metrics.collection_failures.labels(reason="internal").inc()
            _log.exception("collecting run %s failed", job.run_id)
            await self._retry(job, f"internal error: {type(exc).__name__}", None)
        self._held.pop(job.id, None)

    async def _collect(self, job: jobs.ClaimedJob) -> None:
        if await self._db(self._recorded(job.run_id)):
            # Seen again after it was recorded (after a restart, or by another replica): the
            # unique row would refuse it anyway, so spare the upstream the fetches.
            await self._db(jobs.complete(self._sm(), job.id, self.worker_id))
            return
        run = json.loads(job.run_json)
        headers = self._credentials.get(job.key_fingerprint) if job.key_fingerprint else None
        estimate: RunEstimate | None = None
        if headers is None:
            if not job.has_reported_usage:
                # The key expired since the claim (or lives in another replica): wait for it.
                await self._db(jobs.release(self._sm(), job.id, self.worker_id))
                return
            _log.info("recording run %s from its reported usage alone (key not seen)", job.run_id)
        else:
            try:
                estimate = await self._estimate(job, run, _scoped(headers, job))
            except FetchError as exc:
                self._metrics.collection_failures.labels(reason=_reason(exc)).inc()
                if exc.retryable:
                    _log.warning("fetching run %s: %s; will retry", job.run_id, exc)
                    await self._retry(job, str(exc), exc.retry_after)
                    return
                _log.warning("fetching run %s: %s; recording the run alone", job.run_id, exc)
                estimate = await self._estimate_from(run, [], [])
        await self._record(job, run, estimate)

    async def _recorded(self, run_id: str) -> bool:
        async with reading(self._sm()) as session:
            found = await session.scalar(
                select(UsageRecord.id)
                .where(UsageRecord.kind == _KIND, UsageRecord.object_id == run_id)
                .limit(1)
            )
        return found is not None

    async def _estimate(
        self, job: jobs.ClaimedJob, run: dict[str, Any], headers: Mapping[str, str]
    ) -> RunEstimate:
        steps, messages = await asyncio.gather(
            self._fetcher.steps(job.api_prefix, job.api_query, job.thread_id, job.run_id, headers),
            self._fetcher.messages(job.api_prefix, job.api_query, job.thread_id, headers),
        )
        return await self._estimate_from(run, steps, messages)

    async def _estimate_from(
        self, run: dict[str, Any], steps: list[dict[str, Any]], messages: list[dict[str, Any]]
    ) -> RunEstimate:
        count = counter_for_model(run.get("model"))
        # Tokenizing is CPU work: off the event loop, so forwarding never waits on it.
        return await asyncio.get_running_loop().run_in_executor(
            None, estimate_run, run, steps, messages, count, self._constants
        )

    async def _record(
        self, job: jobs.ClaimedJob, run: dict[str, Any], estimate: RunEstimate | None
    ) -> None:
        team = job.team
        if team is None:
            # Not known when the run was seen (database down then): the mapping decides now.
            team = await self._db(
                records.team_for(self._sm(), fingerprint=job.key_fingerprint, project=job.project)
            )
        who = Attribution(
            job.key_fingerprint, job.key_hint, team, job.tag, job.project, job.organization
        )
        built = run_row(run, who, estimate, self._prices, utcnow())
        inserted = await self._db(
            records.record_usage(
                self._sm(),
                built.row,
                code_interpreter_call_times=built.call_times,
                session_price=built.session_price,
            )
        )
        await self._db(jobs.complete(self._sm(), job.id, self.worker_id))
        if inserted:
            row = built.row
            self._metrics.runs_recorded.labels(source=row.usage_source).inc()
            self._metrics.usage(
                row.team, row.model, row.prompt_tokens, row.completion_tokens, row.cost_usd
            )

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
