"""Who pays for a request, worked out fast: the key's HMAC fingerprint (under the configured
secret, or the one kept in the database), its team (the key's, else the project's mapping,
else "unassigned"), tag, project and organization. Lookups are cached: most traffic comes from a
few keys, and working it out again cost more than the rest of a request's accounting
(bench/README.md). Keys seen are kept in memory (CredentialStore) for the collector.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.attribution import Attribution
from proxy.accounting.usage import UsageRow
from proxy.db import mappings
from proxy.db import secrets as db_secrets
from proxy.db.errors import DB_ERRORS
from proxy.keys import CredentialStore, fingerprint, hint, split_query, used_credential

__all__ = ["Attributor"]

_log = logging.getLogger("proxy.accounting")

_TEAM_TTL = 60.0
# The headers attribution depends on (see Attributor.attribute): those sent upstream, and the
# proxy's own, which never are.
_ATTRIBUTED_BY = ("Authorization", "api-key", "OpenAI-Project", "OpenAI-Organization")
_OWN = ("X-Usage-Team", "X-Usage-Tag")
_NOTHING_SENT: Mapping[str, str] = {}
_FP_CACHE = 10_000


def _secret_params(query: str) -> tuple[tuple[str, str], ...]:
    # Only the query's credential parameters tell requests apart for attribution.
    return split_query(query)[1] if query else ()


class Attributor:
    """`sessionmaker` opens the database (team mappings, the secret); `on_key` is called when a
    key is newly kept in memory (the collector may have jobs waiting for it)."""

    def __init__(
        self,
        sessionmaker: Callable[[], async_sessionmaker[AsyncSession]],
        credentials: CredentialStore,
        *,
        key_secret: str,
        allow_client_team: bool,
        on_key: Callable[[], None],
    ) -> None:
        self._sm = sessionmaker
        self.credentials = credentials
        self._allow_client_team = allow_client_team
        self._on_key = on_key
        self._secret: bytes | None = key_secret.encode() or None
        self._secret_ready = asyncio.Event() if self._secret is None else None
        self._fps: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._teams: dict[tuple[str | None, str | None], tuple[str, float]] = {}
        self._attributions: dict[tuple[object, ...], tuple[Attribution, float]] = {}
        self._remembering: set[asyncio.Future[None]] = set()
        # (Authorization, api-key, the query's credential parameters) as sent -> fingerprint:
        # remember_key runs on every response.
        self._fp_by_headers: dict[tuple[object, ...], str] = {}

    @property
    def needs_secret(self) -> bool:
        """No key_secret is configured: `load_secret` must run before fingerprints can."""
        return self._secret is None

    async def load_secret(self) -> None:
        """Read (or create) the database's secret, retrying while the database is down;
        observers wait for it, traffic does not."""
        delay = 0.5
        while True:
            try:
                self._secret = await db_secrets.hmac_secret(self._sm())
                assert self._secret_ready is not None
                self._secret_ready.set()
                return
            except DB_ERRORS as exc:
                # No secret yet means no fingerprints: observers wait, traffic does not.
                _log.warning("cannot read the key secret from the database: %s", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def close(self) -> None:
        """Cancel the fingerprinting of keys still under way."""
        for task in self._remembering:
            task.cancel()
        await asyncio.gather(*self._remembering, return_exceptions=True)

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
        if self.credentials.remember(fp, headers, query):
            self._on_key()  # jobs waiting for this key can be collected now

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
        if self._allow_client_team:
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
            team = await mappings.team_for(self._sm(), fingerprint=fp, project=project)
        except DB_ERRORS:
            # Database down: the last known team, else None, which the write resolves later
            # (billing to "unassigned" for good would move money between teams).
            return cached[0] if cached else None
        if len(self._teams) > _FP_CACHE:
            self._teams.clear()
        self._teams[(fp, project)] = (team, now + _TEAM_TTL)
        return team

    async def resolve_team(self, row: UsageRow) -> UsageRow:
        """The row with its team looked up now, if it could not be when the request was seen."""
        [resolved] = await self.resolve_teams([row])
        return resolved

    async def resolve_teams(self, rows: Sequence[UsageRow]) -> list[UsageRow]:
        """`resolve_team` for many rows: one lookup per distinct (fingerprint, project)."""
        teams: dict[tuple[str | None, str | None], str] = {}
        out: list[UsageRow] = []
        for row in rows:
            if row.team is not None:
                out.append(row)
                continue
            who = (row.key_fingerprint, row.project)
            team = teams.get(who)
            if team is None:
                team = teams[who] = await mappings.team_for(
                    self._sm(), fingerprint=who[0], project=who[1]
                )
            out.append(dataclasses.replace(row, team=team))
        return out
