"""Accounting, wired: the database, attribution (attributor.py), the observers and the
collector, with one lifecycle (`context`, an aiohttp cleanup_ctx).

Collection jobs go through `outbox` (a JobWriter) and usage rows of chat completions,
embeddings and responses through `rows` (a RowWriter): each writes in batches, and holds what
it could not write in a bounded in-memory backlog while the database is down, so an outage
loses nothing short of a restart (after a restart, runs are seen again when clients poll
them; fail open for traffic either way).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import AsyncIterator

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from proxy.accounting.attribution import Attribution
from proxy.accounting.attributor import Attributor
from proxy.accounting.estimate.constants import table_from_settings
from proxy.accounting.mapping_watch import MappingWatch
from proxy.accounting.pricing import load_price_table
from proxy.accounting.process.owners import worker_id
from proxy.accounting.process.supervisor import CollectorProcess, Forked
from proxy.accounting.sources.assistants.collector import RunCollector
from proxy.accounting.sources.assistants.creates import RunCreates
from proxy.accounting.sources.assistants.fetch import RunFetcher
from proxy.accounting.sources.assistants.names import AssistantNames
from proxy.accounting.sources.assistants.sightings import RunObserver, RunSighting
from proxy.accounting.sources.assistants.unseen import UnseenCreates
from proxy.accounting.sources.events.container_collector import (
    ContainerCollector,
    ContainerFetcher,
)
from proxy.accounting.sources.events.observer import EventObserver
from proxy.accounting.unpriced import UnpricedUsage
from proxy.accounting.usage import ASSISTANTS_RUN, UsageSignal
from proxy.accounting.usage_metrics import UsageMetrics
from proxy.accounting.writing.outbox import JobWriter, OutboxJob
from proxy.accounting.writing.row_writer import RowWriter
from proxy.accounting.writing.stored import StoredRelease
from proxy.db import jobs, unseen_creates
from proxy.db.assistant_names import remember_names
from proxy.db.engine import make_engine, make_sessionmaker, ping
from proxy.errors import ConfigError
from proxy.forwarding.forward import Forwarder
from proxy.forwarding.holds import Holder
from proxy.keys import CredentialStore
from proxy.metrics import Metrics
from proxy.settings import Settings

__all__ = ["Accounting"]

_log = logging.getLogger("proxy.accounting")

_BACKLOG_LIMIT = 100_000


class Accounting:
    def __init__(
        self, settings: Settings, metrics: Metrics | None = None, *, forked: Forked | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        try:
            self.prices = load_price_table(settings.pricing_file or None)
            self.constants = table_from_settings(settings)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        self.credentials = CredentialStore(settings.credential_ttl, limit=settings.credential_limit)
        self.metrics.credentials_held.set_function(lambda: len(self.credentials.fingerprints()))
        # "Usage was recorded", from both writers, after they commit.
        self.recorded = UsageSignal()
        self.recorded.subscribe(UsageMetrics(self.metrics))
        self.recorded.subscribe(UnpricedUsage(self.metrics))
        self.engine: AsyncEngine | None = None
        self._sm: async_sessionmaker[AsyncSession] | None = None
        self.attribution = Attributor(
            self.sessionmaker,
            self.credentials,
            key_secret=settings.key_secret,
            allow_client_team=settings.allow_client_team,
            on_key=self._wake_collector,
        )
        # The attributor's, as the observers and the writers use them.
        self.attribute = self.attribution.attribute
        self.remember_key = self.attribution.remember_key
        self.resolve_team = self.attribution.resolve_team
        self.resolve_teams = self.attribution.resolve_teams
        # This serving process, as the run intents it writes name it.
        self.worker = worker_id(os.urandom(3).hex())
        self.outbox = JobWriter(
            self.sessionmaker,
            self.metrics,
            limit=_BACKLOG_LIMIT,
            on_written=self._jobs_written,
            on_pending=lambda _: self._show_backlog(),
            worker=self.worker,
        )
        self.rows = RowWriter(
            self.sessionmaker,
            self.metrics,
            resolve_teams=self.resolve_teams,
            recorded=self.recorded,
            limit=_BACKLOG_LIMIT,
            on_pending=lambda _: self._show_backlog(),
        )
        # Run creates: their intents before, their answers held until their jobs are stored.
        self.creates = RunCreates(self.sessionmaker, self.attribute, self.remember_key, self.worker)
        self._forwarder: Forwarder | None = None
        self._forked = forked
        self.collector: RunCollector | CollectorProcess | None = None
        self.containers: ContainerCollector | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # --- wiring --------------------------------------------------------------------------
    def attach_forwarder(self, forwarder: Forwarder) -> None:
        """The collector fetches through the proxy's own upstream pool and base URL."""
        self._forwarder = forwarder

    def observers(self) -> list[object]:
        events = EventObserver(
            self.attribute,
            self.prices,
            self.rows.submit,
            api_error=self.metrics.api_error,
            partial=self.metrics.partial_estimate,
            containers=self.rows.containers,
        )
        names = AssistantNames(lambda found: remember_names(self.sessionmaker(), found))
        runs = RunObserver(self.open_job, remember_key=self.remember_key)
        # After the run observer (a create's intent goes with its job, or alone once it
        # ended); last, what releases held answers once what the others queued is written.
        return [runs, self.creates, events, names, StoredRelease([self.outbox, self.rows])]

    def holders(self) -> list[Holder]:
        """What holds an answer's end until what it showed is stored (proxy.forwarding.holds)."""
        return [self.creates]

    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        assert self._sm is not None, "accounting is not started"
        return self._sm

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        self.engine = make_engine(self.settings.database_url)
        self._sm = make_sessionmaker(self.engine)
        assert self._forwarder is not None
        if self.settings.collector_process:
            self.collector = CollectorProcess(
                self.settings,
                self.credentials,
                self.recorded,
                self.metrics.collection_failed,
                self._forked,
            )
        else:
            forwarder = self._forwarder
            self.collector = RunCollector.from_settings(
                self.settings,
                self.sessionmaker,
                RunFetcher(
                    lambda: forwarder.session,
                    forwarder.upstream_url,
                    timeout=self.settings.collector_fetch_timeout,
                ),
                self.credentials,
                self.prices,
                self.constants,
                self.recorded,
                self.metrics.collection_failed,
            )
        forwarder = self._forwarder
        s = self.settings
        self.containers = ContainerCollector(
            self.sessionmaker,
            ContainerFetcher(
                lambda: forwarder.session,
                forwarder.upstream_url,
                timeout=s.collector_fetch_timeout,
            ),
            self.credentials,
            self.prices,
            self.recorded,
            poll_interval=s.collector_poll_interval,
            lease=s.collector_lease,
            # A key no replica has held this long (it would have been forgotten) never comes
            # back: the session is then recorded without reading the container.
            keyless_wait=s.credential_ttl,
            max_attempts=s.collector_max_attempts,
            retry_base=s.collector_retry_base,
            max_backoff=s.collector_max_backoff,
        )
        if self.attribution.needs_secret:
            self._tasks.append(asyncio.create_task(self.attribution.load_secret()))
        watch = MappingWatch(
            self.sessionmaker,
            self.attribution.forget_teams,
            self.settings.mapping_poll_interval,
        )
        self._tasks.append(asyncio.create_task(watch.run()))
        unseen = UnseenCreates(
            self.sessionmaker,
            unseen_after=s.unseen_after,
            lease=s.collector_lease,
            on_unseen=self.metrics.run_unseen,
        )
        self._tasks.append(asyncio.create_task(unseen.run(), name="unseen-creates"))
        self.collector.start()
        self.containers.start()
        self.outbox.start()
        self.rows.start()
        try:
            yield
        finally:
            await self.collector.stop()
            await self.containers.stop()
            # Before the engine is disposed: everything observed so far is written.
            await self.outbox.stop()
            await self.rows.stop()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.attribution.close()
            await self.engine.dispose()

    def collector_status(self) -> dict[str, object]:
        """For /_proxy/health: whether runs are being collected, and where."""
        collector = self.collector
        return {
            "ok": collector is not None and collector.running,
            "process": collector.pid if isinstance(collector, CollectorProcess) else None,
        }

    async def database_ok(self) -> bool:
        return self.engine is not None and await ping(self.engine)

    async def pending_jobs(self) -> int | None:
        """Collection jobs still to do; None before the database is open."""
        if self.engine is None:
            return None
        return await jobs.pending_count(self.sessionmaker())

    # --- writes --------------------------------------------------------------------------
    async def open_job(self, sighting: RunSighting) -> None:
        """A run was seen (first, or first finished): queue its collection job for the outbox
        writer, which inserts it with the jobs that came meanwhile (or keeps it until the DB is
        back). Queued, never awaited: the client's answer does not wait for the write."""
        who = await self.attribute(
            sighting.upstream_headers, sighting.request_headers, query=sighting.query_string
        )
        run = sighting.run
        intent = self.creates.intent_of(sighting.request_id)
        job = OutboxJob(
            intent=intent,
            seen_elsewhere=None if intent is not None else _seen_elsewhere(sighting, who),
            source=ASSISTANTS_RUN,
            object_id=run["id"],
            thread_id=run["thread_id"],
            api_prefix=sighting.api_prefix,
            api_query=sighting.api_query,
            object_json=sighting.run_json,
            **who.columns(),
            has_reported_usage=sighting.terminal and isinstance(run.get("usage"), dict),
            in_progress=not sighting.terminal,
        )
        self.outbox.submit(job)

    async def unseen_creates(self) -> int | None:
        """Create-and-runs marked unseen (proxy.db.unseen_creates); None before the database
        is open."""
        if self.engine is None:
            return None
        return (await unseen_creates.unseen(self.sessionmaker())).count

    def _jobs_written(self) -> None:
        # Only now can the collector claim them.
        self._wake_collector()

    def _wake_collector(self) -> None:
        if self.collector is not None:
            self.collector.wake()

    def _show_backlog(self) -> None:
        # Jobs and usage rows waiting in the writers: during an outage they are held there.
        self.metrics.backlog.set(self.outbox.pending + self.rows.pending)


def _seen_elsewhere(sighting: RunSighting, who: Attribution) -> unseen_creates.RunSeen | None:
    """The run, for matching with a create-and-run's intent, when this sighting is not a run
    create's answer (that one has its own intent, or failed to write it)."""
    created = sighting.run.get("created_at")
    fingerprint = who.key_fingerprint
    if sighting.from_create or not fingerprint or not isinstance(created, int | float):
        return None
    assistant = sighting.run.get("assistant_id")
    return unseen_creates.RunSeen(
        object_id=sighting.run["id"],
        thread_id=sighting.run.get("thread_id"),
        key_fingerprint=fingerprint,
        created_at=dt.datetime.fromtimestamp(created, dt.UTC),
        assistant_id=assistant if isinstance(assistant, str) else None,
    )
