"""Accounting, wired: the database, the key fingerprinter, team lookup, the observers and the
collector, with one lifecycle (`context`, an aiohttp cleanup_ctx).

Collection jobs go through `outbox` (a JobWriter) and usage rows of chat completions,
embeddings and responses through `rows` (a RowWriter): each writes in batches, and holds what
it could not write in a bounded in-memory backlog while the database is down, so an outage
loses nothing short of a restart (after a restart, runs are seen again when clients poll
them; fail open for traffic either way).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from proxy.accounting.attribution import Attribution
from proxy.accounting.collector import RunCollector
from proxy.accounting.collector_process import CollectorProcess, Forked
from proxy.accounting.estimate.runs import EstimateConstants
from proxy.accounting.estimate.tokenizer import warm_up
from proxy.accounting.events import EventObserver
from proxy.accounting.fetch import RunFetcher
from proxy.accounting.outbox import JobWriter
from proxy.accounting.pricing import load_price_table
from proxy.accounting.row_writer import RowWriter
from proxy.accounting.runs import RunObserver, RunSighting
from proxy.db import jobs, records
from proxy.db.engine import make_engine, make_sessionmaker, ping
from proxy.db.errors import DB_ERRORS
from proxy.errors import ConfigError
from proxy.forward import Forwarder
from proxy.keys import CredentialStore, fingerprint, hint, split_query, used_credential
from proxy.metrics import Metrics
from proxy.settings import Settings

__all__ = ["Accounting"]

_log = logging.getLogger("proxy.accounting")

_BACKLOG_LIMIT = 100_000
_TEAM_TTL = 60.0
# The headers attribution depends on (see Accounting.attribute): those sent upstream, and the
# proxy's own, which never are.
_ATTRIBUTED_BY = ("Authorization", "api-key", "OpenAI-Project", "OpenAI-Organization")
_OWN = ("X-Usage-Team", "X-Usage-Tag")
_NOTHING_SENT: Mapping[str, str] = {}
_FP_CACHE = 10_000


def _secret_params(query: str) -> tuple[tuple[str, str], ...]:
    # Only the query's credential parameters tell requests apart for attribution.
    return split_query(query)[1] if query else ()


class Accounting:
    def __init__(
        self, settings: Settings, metrics: Metrics | None = None, *, forked: Forked | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        try:
            self.prices = load_price_table(settings.pricing_file or None)
            self.constants = EstimateConstants.from_mapping(settings.estimate_constants())
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        self.credentials = CredentialStore(settings.credential_ttl, limit=settings.credential_limit)
        self.metrics.credentials_held.set_function(lambda: len(self.credentials.fingerprints()))
        self.engine: AsyncEngine | None = None
        self._sm: async_sessionmaker[AsyncSession] | None = None
        self._secret: bytes | None = settings.key_secret.encode() or None
        self._secret_ready = asyncio.Event() if self._secret is None else None
        self._fps: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._teams: dict[tuple[str | None, str | None], tuple[str, float]] = {}
        self._attributions: dict[tuple[str | None, ...], tuple[Attribution, float]] = {}
        self.outbox = JobWriter(
            self.sessionmaker,
            self.metrics,
            limit=_BACKLOG_LIMIT,
            on_written=self._jobs_written,
            on_pending=lambda _: self._show_backlog(),
        )
        self.rows = RowWriter(
            self.sessionmaker,
            self.metrics,
            resolve_teams=self.resolve_teams,
            limit=_BACKLOG_LIMIT,
            on_pending=lambda _: self._show_backlog(),
        )
        self._forwarder: Forwarder | None = None
        self._forked = forked
        self.collector: RunCollector | CollectorProcess | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._remembering: set[asyncio.Future[None]] = set()
        # (Authorization, api-key) as sent -> fingerprint: remember_key runs on every response.
        self._fp_by_headers: dict[tuple[str | None, str | None], str] = {}

    # --- wiring --------------------------------------------------------------------------
    def attach_forwarder(self, forwarder: Forwarder) -> None:
        """The collector fetches through the proxy's own upstream pool and base URL."""
        self._forwarder = forwarder

    def observers(self) -> list[object]:
        return [RunObserver(self.open_job, remember_key=self.remember_key), EventObserver(self)]

    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        assert self._sm is not None, "accounting is not started"
        return self._sm

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        self.engine = make_engine(self.settings.database_url)
        self._sm = make_sessionmaker(self.engine)
        assert self._forwarder is not None
        if self.settings.collector_process:
            self.collector = CollectorProcess(
                self.settings, self.credentials, self.metrics, self._forked
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
                self.metrics,
            )
        loop = asyncio.get_running_loop()
        # Loading the encodings takes a moment: do it now, off the loop, not on the first run.
        warm = loop.run_in_executor(None, warm_up)
        if self._secret is None:
            self._tasks.append(asyncio.create_task(self._load_secret()))
        self.collector.start()
        self.outbox.start()
        self.rows.start()
        try:
            yield
        finally:
            await self.collector.stop()
            # Before the engine is disposed: everything observed so far is written.
            await self.outbox.stop()
            await self.rows.stop()
            for task in [*self._tasks, *self._remembering]:
                task.cancel()
            await asyncio.gather(*self._tasks, *self._remembering, return_exceptions=True)
            with contextlib.suppress(Exception):
                await warm
            await self.engine.dispose()

    async def _load_secret(self) -> None:
        delay = 0.5
        while True:
            try:
                self._secret = await records.hmac_secret(self.sessionmaker())
                assert self._secret_ready is not None
                self._secret_ready.set()
                return
            except DB_ERRORS as exc:
                # No secret yet means no fingerprints: observers wait, traffic does not.
                _log.warning("cannot read the key secret from the database: %s", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def collector_status(self) -> dict[str, object]:
        """For /_proxy/health: whether runs are being collected, and where."""
        collector = self.collector
        return {
            "ok": collector is not None and collector.running,
            "process": collector.pid if isinstance(collector, CollectorProcess) else None,
        }

    async def database_ok(self) -> bool:
        return self.engine is not None and await ping(self.engine)

    # --- attribution ---------------------------------------------------------------------
    async def _fingerprint(self, key: str) -> str:
        fp = self._fps.get(key)
        if fp is not None:
            self._fps.move_to_end(key)
            return fp
        if self._secret is None:
            assert self._secret_ready is not None
            await self._secret_ready.wait()
        assert self._secret is not None
        fp = fingerprint(key, self._secret)
        self._fps[key] = fp
        if len(self._fps) > _FP_CACHE:
            self._fps.popitem(last=False)
        return fp

    def remember_key(self, headers: Mapping[str, str], query: str = "") -> None:
        """Keep this request's credential in memory: a job waiting for this key (after a
        restart, or from another replica's sighting) can now be collected here. `headers` are
        the request's as sent upstream. Called for every response, so a known key costs a few
        dictionary lookups; a new one is fingerprinted on a task (its secret may still be
        loading)."""
        sent = (headers.get("Authorization"), headers.get("api-key"), _secret_params(query))
        fp = self._fp_by_headers.get(sent)
        if fp is None:
            used = used_credential(headers, query)
            if used is not None:
                task = asyncio.ensure_future(self._remember_new(sent, used.key, headers, query))
                self._remembering.add(task)
                task.add_done_callback(self._remembering.discard)
        else:
            self._keep(fp, headers, query)

    async def _remember_new(
        self, sent: tuple[object, ...], key: str, headers: Mapping[str, str], query: str
    ) -> None:
        fp = await self._fingerprint(key)
        if len(self._fp_by_headers) >= _FP_CACHE:
            self._fp_by_headers.clear()
        self._fp_by_headers[sent] = fp
        self._keep(fp, headers, query)

    def _keep(self, fp: str, headers: Mapping[str, str], query: str) -> None:
        if self.credentials.remember(fp, headers, query) and self.collector is not None:
            self.collector.wake()  # jobs waiting for this key can be collected now

    async def attribute(
        self,
        sent: Mapping[str, str] | None,
        own: Mapping[str, str],
        *,
        keep: bool = True,
        query: str = "",
    ) -> Attribution:
        """Who pays for a request: the key's fingerprint, team, tag, project and organization.
        Also keeps the credential in memory for collection, unless not `keep` (the upstream
        refused the key).

        `sent` are the request's headers as sent upstream (None: nothing was sent), which
        alone say which key and project the request used; `own` are the headers as received,
        for the proxy's own X-Usage-* headers, which are never forwarded; `query` is the query
        string as sent, whose credential parameters count as the key when no header has one.

        Remembered per combination of the headers it depends on, for as long as a team lookup
        is: most traffic comes from a few keys, and working it out again cost more than the
        rest of a request's accounting (bench/README.md)."""
        now = time.monotonic()
        sent = _NOTHING_SENT if sent is None else sent
        seen = (*map(sent.get, _ATTRIBUTED_BY), *map(own.get, _OWN), _secret_params(query))
        hit = self._attributions.get(seen)
        if hit is not None and hit[1] > now:
            # The credential itself is refreshed by remember_key, which sees every response.
            return hit[0]
        who = await self._attribute(sent, own, keep, query)
        if who.team is not None:  # None: the database is down; the write resolves it later
            if len(self._attributions) >= _FP_CACHE:
                self._attributions.clear()
            self._attributions[seen] = (who, now + _TEAM_TTL)
        return who

    async def _attribute(
        self, sent: Mapping[str, str], own: Mapping[str, str], keep: bool, query: str
    ) -> Attribution:
        used = used_credential(sent, query)
        key = used.key if used is not None else None
        fp = await self._fingerprint(key) if key else None
        if key and fp and keep:
            self.credentials.remember(fp, sent, query)
        project = Attribution.header(sent, "OpenAI-Project")
        team = None
        if self.settings.allow_client_team:
            team = Attribution.header(own, "X-Usage-Team")
        if team is None:
            team = await self._team(fp, project)
        return Attribution(
            key_fingerprint=fp,
            key_hint=hint(key) if key else None,
            team=team,
            tag=Attribution.header(own, "X-Usage-Tag"),
            project=project,
            organization=Attribution.header(sent, "OpenAI-Organization"),
        )

    async def _team(self, fp: str | None, project: str | None) -> str | None:
        cached = self._teams.get((fp, project))
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            team = await records.team_for(self.sessionmaker(), fingerprint=fp, project=project)
        except DB_ERRORS:
            # Database down: the last known team, else None, which the write resolves later
            # (billing to "unassigned" for good would move money between teams).
            return cached[0] if cached else None
        if len(self._teams) > _FP_CACHE:
            self._teams.clear()
        self._teams[(fp, project)] = (team, now + _TEAM_TTL)
        return team

    # --- writes --------------------------------------------------------------------------
    async def open_job(self, sighting: RunSighting) -> None:
        """A run was seen finished: queue its collection job for the outbox writer, which
        inserts it with the jobs that came meanwhile (or keeps it until the DB is back)."""
        who = await self.attribute(
            sighting.upstream_headers, sighting.request_headers, query=sighting.query_string
        )
        run = sighting.run
        job = jobs.NewJob(
            run_id=run["id"],
            thread_id=run["thread_id"],
            api_prefix=sighting.api_prefix,
            api_query=sighting.api_query,
            run_json=sighting.run_json,
            **who.columns(),
            has_reported_usage=isinstance(run.get("usage"), dict),
        )
        self.outbox.submit(job)

    def _jobs_written(self) -> None:
        # Only now can the collector claim them.
        if self.collector is not None:
            self.collector.wake()

    async def resolve_team(self, row: records.UsageRow) -> records.UsageRow:
        """The row with its team looked up now, if it could not be when the request was seen."""
        [resolved] = await self.resolve_teams([row])
        return resolved

    async def resolve_teams(self, rows: Sequence[records.UsageRow]) -> list[records.UsageRow]:
        """`resolve_team` for many rows: one lookup per distinct (fingerprint, project)."""
        teams: dict[tuple[str | None, str | None], str] = {}
        out: list[records.UsageRow] = []
        for row in rows:
            if row.team is not None:
                out.append(row)
                continue
            who = (row.key_fingerprint, row.project)
            team = teams.get(who)
            if team is None:
                team = teams[who] = await records.team_for(
                    self.sessionmaker(), fingerprint=who[0], project=who[1]
                )
            out.append(dataclasses.replace(row, team=team))
        return out

    def _show_backlog(self) -> None:
        # Jobs and usage rows waiting in the writers: during an outage they are held there.
        self.metrics.backlog.set(self.outbox.pending + self.rows.pending)
