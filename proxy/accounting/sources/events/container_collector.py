"""Prices each claimed code interpreter container once its session is over: a collection job
of source "container" (proxy.db.jobs) per container, queued by the row writer when a response
first claims the container (proxy.db.containers), read back from the Containers API with the
client's own key, and recorded as one usage row of kind "container" (events/containers.py).

Exactly once: the claim gives a container one owner across replicas; the job's (source,
object_id) and the row's (kind, object_id) are unique, so a replica that dies between writing
the row and deleting the job only makes the next claimer find the row there.

Claims are the collectors' short leases (`collector_lease`, proxy.accounting.sources.leases):
renewed while the jobs are held, and a dead predecessor's on this host taken over at once, so
a killed replica's container jobs are settled by the next start within seconds.

While the container is active its job is given back until its expiry (no attempt counted).
A fetch that fails retryably is retried with backoff; after `max_attempts`, or when no replica
has held the key for `keyless_wait` seconds since the job was queued (the credential TTL, after
which no replica would still hold it), or the container is gone (404) or its key refused, the
session is recorded as one full session, an estimate. Never visible to clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from yarl import URL

from proxy.accounting.attribution import Attribution
from proxy.accounting.pricing import PriceTable
from proxy.accounting.process.owners import worker_id
from proxy.accounting.shielded import Shielded
from proxy.accounting.sources.events.containers import (
    CONTAINER_KIND,
    ContainerLife,
    container_row,
    life_of,
)
from proxy.accounting.sources.leases import Leases
from proxy.accounting.usage import UsageRecorded, UsageSink
from proxy.db import jobs, mappings
from proxy.db import usage as db_usage
from proxy.db.errors import DB_ERRORS
from proxy.db.models import utcnow
from proxy.errors import FetchError
from proxy.forwarding.decode import decode_body, parse_json
from proxy.keys import CredentialStore, replay_request
from proxy.retry_after import parse_retry_after

__all__ = ["ContainerCollector", "ContainerFetcher"]

_log = logging.getLogger("proxy.accounting.containers")
_SCOPE = {"openai-project", "openai-organization"}
_GRACE = 5.0  # seconds past a container's expiry before it is read again
_STOP_TIMEOUT = 10.0


class ContainerFetcher:
    """GET {prefix}/containers/{id}: the container object, or None when it is gone (404)."""

    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession],
        url_for: Callable[[str], URL],
        *,
        timeout: float = 60.0,
    ) -> None:
        self._session = session
        self._url_for = url_for
        self._timeout = timeout

    async def get(
        self, prefix: str, query: str, container_id: str, headers: Mapping[str, str]
    ) -> dict[str, Any] | None:
        path = f"{prefix}/containers/{quote(container_id, safe='')}"
        url = self._url_for(f"{path}?{query}" if query else path)
        try:
            async with asyncio.timeout(self._timeout):
                async with self._session().get(
                    url, headers=dict(headers), allow_redirects=False
                ) as resp:
                    body = await resp.read()
                    if resp.status == 404:
                        return None
                    if resp.status != 200:
                        retry = resp.headers.get("retry-after")
                        raise FetchError(
                            f"GET {prefix}/containers/... answered {resp.status}",
                            status=resp.status,
                            retry_after=parse_retry_after(retry),
                        )
                    encoding = resp.headers.get("Content-Encoding")
                    found = parse_json(decode_body(body, encoding) if encoding else body)
        except TimeoutError as exc:
            raise FetchError("GET container timed out") from exc
        except aiohttp.ClientError as exc:
            raise FetchError(f"GET container failed: {type(exc).__name__}") from exc
        except ValueError as exc:  # DecodeError
            raise FetchError("GET container: unreadable body") from exc
        return found if isinstance(found, dict) else None


class ContainerCollector:
    """One task per process; several processes share the jobs table (proxy.db.jobs.claim)."""

    def __init__(
        self,
        sm: Callable[[], async_sessionmaker[AsyncSession]],
        fetcher: ContainerFetcher,
        credentials: CredentialStore,
        prices: PriceTable,
        recorded: UsageSink,
        *,
        poll_interval: float = 1.0,
        lease: float = 10.0,
        keyless_wait: float = 600.0,
        max_attempts: int = 20,
        retry_base: float = 1.0,
        max_backoff: float = 300.0,
        claim_size: int = 50,
    ) -> None:
        self._sm = sm
        self._fetcher = fetcher
        self._credentials = credentials
        self._prices = prices
        self._recorded = recorded
        self._poll = poll_interval
        self._lease = lease
        self._keyless_wait = keyless_wait
        self._max_attempts = max_attempts
        self._retry_base = retry_base
        self._max_backoff = max_backoff
        self._claim_size = claim_size
        # host:pid:boot.start.suffix (proxy.accounting.process.owners), so that the next
        # start on this host can tell this process is dead and take its jobs at once.
        self.worker_id = worker_id(f"cntr-{os.urandom(3).hex()}")
        self._wake = asyncio.Event()
        self._held: dict[int, jobs.ClaimedJob] = {}  # claimed, not settled yet: renewed
        self._db = Shielded()  # the leases' operations; stop() waits for them
        self._task: asyncio.Task[None] | None = None
        self._leases: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="container-collector")
        leases = Leases(
            self._sm,
            lambda: self._held,
            self.worker_id,
            self._lease,
            self._db,
            on_freed=self._wake.set,
        )
        self._leases = asyncio.create_task(leases.run(), name="container-leases")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Stop settling, and give back the jobs still held, so another replica (or the next
        start) takes them at once; one that cannot be given back is claimed again when its
        lease runs out: nothing is lost."""
        for task in (self._task, self._leases):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._leases = None
        await self._db.wait(_STOP_TIMEOUT)
        held, self._held = list(self._held), {}
        if not held:
            return
        try:
            async with asyncio.timeout(_STOP_TIMEOUT):
                await jobs.release_many(self._sm(), held, self.worker_id)
        except DB_ERRORS as exc:
            _log.warning("cannot give back %d container job(s): %s", len(held), type(exc).__name__)

    async def _loop(self) -> None:
        while True:
            try:
                done = await self.collect_once()
            except asyncio.CancelledError:
                raise
            except DB_ERRORS as exc:
                _log.warning("container collection: database unavailable (%s)", type(exc).__name__)
                done = 0
            except Exception:
                _log.exception("container collection failed")
                done = 0
            if done < self._claim_size:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll):
                        await self._wake.wait()
                self._wake.clear()

    async def collect_once(self) -> int:
        """Claim the due container jobs and settle each; how many were claimed."""
        claimed = await jobs.claim(
            self._sm(),
            worker=self.worker_id,
            fingerprints=self._credentials.fingerprints(),
            reported_wait=self._keyless_wait,
            lease=self._lease,
            limit=self._claim_size,
            max_attempts=self._max_attempts,
            source=CONTAINER_KIND,
        )
        self._held.update((job.id, job) for job in claimed)
        try:
            for job in claimed:
                await self._settle(job)  # recorded, given back or retried: no longer held
                del self._held[job.id]
        except Exception:
            # Left to their leases, which run out (and the jobs are claimed again), instead of
            # renewed for ever. On cancellation they stay held, for stop() to give back.
            for job in claimed:
                self._held.pop(job.id, None)
            raise
        return len(claimed)

    async def _settle(self, job: jobs.ClaimedJob) -> None:
        sm = self._sm()
        now = utcnow()
        headers = self._credentials.get(job.key_fingerprint) if job.key_fingerprint else None
        if job.attempts >= self._max_attempts:
            _log.warning(
                "container %s: %d attempts failed (last: %s); one full session",
                job.object_id,
                job.attempts,
                job.last_error,
            )
            await self._record(job, None, now)
            return
        if headers is None:
            if now - job.created_at < dt.timedelta(seconds=self._keyless_wait):
                await jobs.release(sm, job.id, self.worker_id, delay=self._poll * 10)
                return
            _log.info("container %s: its key is not held here; one full session", job.object_id)
            await self._record(job, None, now)
            return
        try:
            query, scoped = _scoped(headers, job)
            found = await self._fetcher.get(job.api_prefix, query, job.object_id, scoped)
        except FetchError as exc:
            if exc.retryable:
                delay = jobs.backoff(
                    job.attempts + 1,
                    base=self._retry_base,
                    cap=self._max_backoff,
                    retry_after=exc.retry_after,
                )
                await jobs.retry(sm, job.id, self.worker_id, error=str(exc), delay=delay)
                return
            _log.warning("container %s: %s; one full session", job.object_id, exc)
            found = None
        life = life_of(found) if found is not None else None
        if life is not None and not life.final(now):
            assert life.expires_at is not None
            wait = (life.expires_at - now).total_seconds() + _GRACE
            await jobs.release(sm, job.id, self.worker_id, delay=max(wait, 1.0))
            return
        if found is None:
            _log.info("container %s is gone; one full session", job.object_id)
        await self._record(job, life, now)

    async def _record(
        self, job: jobs.ClaimedJob, life: ContainerLife | None, now: dt.datetime
    ) -> None:
        sm = self._sm()
        team = job.team or await mappings.team_for(
            sm, fingerprint=job.key_fingerprint, project=job.project
        )
        who = Attribution(
            job.key_fingerprint, job.key_hint, team, job.tag, job.project, job.organization
        )
        row = container_row(job.object_id, job.object_json, who.columns(), life, self._prices, now)
        written = await db_usage.record_rows(sm, [row])
        await jobs.complete(sm, job.id, self.worker_id)
        if written:
            self._recorded(UsageRecorded.of(written))


def _scoped(headers: Mapping[str, str], job: jobs.ClaimedJob) -> tuple[str, dict[str, str]]:
    """The query and the key's headers fitted to the response's project and organization."""
    sent, query = replay_request(headers, job.api_query)
    scoped = {k: v for k, v in sent.items() if k.lower() not in _SCOPE}
    if job.project:
        scoped["OpenAI-Project"] = job.project
    if job.organization:
        scoped["OpenAI-Organization"] = job.organization
    return query, scoped
