"""Recovering run intents (proxy.db.run_intents) left behind: a run create written down, whose
replica died before the run's job was stored (its answer lost with it, or answered and never
polled again). The thread's runs are listed with the client's key (in memory here once a
request with that key came by, as for jobs) and every run created since the intent (less
`_SKEW`, for clocks and whole seconds) gets its job, in one transaction with the intent's
deletion. Jobs are unique per run: a run whose job exists already is not opened twice, and a
recorded one is completed without a fetch (collector.py).

Which intents: those of a worker of this host that is certainly dead (owners.py), at once;
any other once older than a lease (a worker of another host, or a live one whose deletion
failed: listing costs one request, and finds nothing new).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.process.owners import is_dead, this_host
from proxy.accounting.sources.assistants.collect import scoped_headers
from proxy.accounting.sources.assistants.fetch import RunFetcher
from proxy.accounting.sources.assistants.sightings import dump_run, is_terminal
from proxy.accounting.sources.sweeps import sweep_forever
from proxy.accounting.usage import ASSISTANTS_RUN
from proxy.db import jobs, run_intents
from proxy.db.models import utcnow
from proxy.errors import FetchError
from proxy.keys import CredentialStore, replay_request

__all__ = ["IntentRecovery"]

_log = logging.getLogger("proxy.accounting.collector")

_SKEW = dt.timedelta(seconds=5)
_T = TypeVar("_T")


class IntentRecovery:
    def __init__(
        self,
        sm: Callable[[], async_sessionmaker[AsyncSession]],
        fetcher: RunFetcher,
        credentials: CredentialStore,
        db: Callable[[Awaitable[_T]], Awaitable[_T]],
        *,
        every: float,
        lease: float,
        on_opened: Callable[[], None],
    ) -> None:
        self._sm = sm
        self._fetcher = fetcher
        self._credentials = credentials
        self._db = db
        self._every = every
        self._lease = lease
        self._on_opened = on_opened
        self.recovered = 0  # intents recovered by this worker

    async def run(self) -> None:
        await sweep_forever(self.sweep, self._every, "look for run intents", _log)

    async def sweep(self) -> int:
        """Recover what is recoverable now; how many intents."""
        fingerprints = self._credentials.fingerprints()
        if not fingerprints:
            return 0
        now = utcnow()
        host = this_host()
        found = await self._db(
            run_intents.recoverable(
                self._sm(),
                fingerprints=fingerprints,
                older_than=now - dt.timedelta(seconds=self._lease),
                host_like=f"{host}:%",
            )
        )
        done = 0
        for intent in found:
            young = intent.created_at >= now - dt.timedelta(seconds=self._lease)
            if young and not is_dead(intent.worker, host=host):
                continue  # its worker lives and resolves it
            if await self._recover(intent):
                done += 1
        self.recovered += done
        return done

    async def _recover(self, intent: run_intents.Intent) -> bool:
        headers = self._credentials.get(intent.key_fingerprint) if intent.key_fingerprint else None
        if headers is None:
            return False
        scoped, query = replay_request(
            scoped_headers(headers, intent.project, intent.organization), intent.api_query
        )
        try:
            runs = await self._fetcher.runs(intent.api_prefix, query, intent.thread_id, scoped)
        except FetchError as exc:
            if exc.retryable:
                _log.warning("listing the runs of an intent's thread: %s; will retry", exc)
                return False
            runs = []  # the thread is gone (or the key refused): nothing to recover
        since = (intent.created_at - _SKEW).timestamp()
        new = [_job(run, intent) for run in runs if _created(run) >= since]
        delete = run_intents.resolved_by([intent.id])
        if new:
            await self._db(jobs.enqueue_many(self._sm(), new, also=delete))
            self._on_opened()
        else:
            await self._db(run_intents.resolve(self._sm(), [intent.id]))
        _log.info("recovered a run intent left behind: %d run(s) of its thread", len(new))
        return True


def _created(run: dict[str, Any]) -> float:
    created = run.get("created_at")
    return float(created) if isinstance(created, int | float) else float("inf")


def _job(run: dict[str, Any], intent: run_intents.Intent) -> jobs.NewJob:
    ended = is_terminal(run)
    return jobs.NewJob(
        source=ASSISTANTS_RUN,
        object_id=run["id"],
        thread_id=intent.thread_id,
        api_prefix=intent.api_prefix,
        api_query=intent.api_query,
        object_json=dump_run(run),
        key_fingerprint=intent.key_fingerprint,
        key_hint=intent.key_hint,
        team=intent.team,
        tag=intent.tag,
        project=intent.project,
        organization=intent.organization,
        has_reported_usage=ended and isinstance(run.get("usage"), dict),
        in_progress=not ended,
    )
