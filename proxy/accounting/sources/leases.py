"""The claims of a collector of any source (Assistants runs, containers) kept alive, and a
dead predecessor's taken over.

Claims are short leases (`collector_lease`, 10 s by default) renewed every third of a lease
while the jobs are held, so the jobs of a replica that dies are free within a lease, on any
host. On its own host a collector does better: at start, and every lease after, it frees the
claims of workers of this host that are certainly dead (proxy.accounting.process.owners: the
pid is gone, or is another process now), so a restarted proxy takes over its predecessor's
jobs at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.process.owners import is_dead, this_host
from proxy.db import job_claims, jobs
from proxy.db.errors import DB_ERRORS

__all__ = ["Leases", "take_over"]

_log = logging.getLogger("proxy.accounting.collector")

_T = TypeVar("_T")


async def take_over(sm: async_sessionmaker[AsyncSession], worker: str) -> int:
    """Free the claims of this host's dead workers (a predecessor killed before it could give
    its jobs back), other than `worker`; how many jobs."""
    host = this_host()
    # `_` or `%` in a host name match too much, never too little: is_dead compares hosts.
    held = await job_claims.claimants(sm, like=f"{host}:%")
    dead = {w for w in held if w != worker and is_dead(w, host=host)}
    freed = await job_claims.free_claims(sm, dead)
    if freed:
        _log.info("took over %d job(s) claimed by %d dead worker(s)", freed, len(dead))
    return freed


class Leases:
    def __init__(
        self,
        sm: Callable[[], async_sessionmaker[AsyncSession]],
        held: Callable[[], dict[int, jobs.ClaimedJob]],
        worker: str,
        lease: float,
        db: Callable[[Awaitable[_T]], Awaitable[_T]],
        *,
        on_freed: Callable[[], None],
    ) -> None:
        self._sm = sm
        self._held = held
        self._worker = worker
        self._lease = lease
        self._db = db
        self._on_freed = on_freed

    async def run(self) -> None:
        every = max(self._lease / 3, 0.05)
        since_takeover = float("inf")
        while True:
            try:
                if since_takeover >= self._lease:
                    since_takeover = 0.0
                    if await self._db(take_over(self._sm(), self._worker)):
                        self._on_freed()
                await self._db(self._renew())
            except asyncio.CancelledError:
                raise
            except DB_ERRORS as exc:
                # The leases run out meanwhile: the jobs go to whoever claims them next.
                _log.warning("collector cannot renew its claims: %s", type(exc).__name__)
            except Exception:
                _log.exception("renewing claims failed; retrying")
            await asyncio.sleep(every)
            since_takeover += every

    async def _renew(self) -> None:
        held = self._held()
        if not held:
            return
        renewed, until = await job_claims.renew(
            self._sm(), list(held), self._worker, lease=self._lease
        )
        for job_id in renewed:
            job = held.get(job_id)
            if job is not None:
                # The copy in hand tells the collector how long it may still work on the job.
                held[job_id] = dataclasses.replace(job, claimed_until=until)
