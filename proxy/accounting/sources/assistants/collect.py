"""One Assistants run's usage row from its collection job: its steps and messages fetched with
the client's own key (fetch.py), its tokens estimated (proxy.accounting.estimate) or taken
from what it reported, its team, priced (rows.py). What to do with the job otherwise is the
collector's: give it back while its key is not in memory, or retry it later.

- a run still in progress (its job was opened when it was first seen) is retrieved first: still
  in progress, the job is given back to be retrieved again later, backing off with the run's
  age (Follow); finished, or past its `expires_at`, it is collected like any other;
- a fetch that fails with 429/5xx/timeout is retried with backoff (429 honours retry-after);
- a fetch the upstream refuses for good (401/403/404) records what the run itself tells;
- a job that has failed `max_attempts` times is recorded from the run alone, flagged gave_up.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.attribution import Attribution
from proxy.accounting.estimate.constants import ConstantsTable
from proxy.accounting.estimate.runs import RunEstimate, estimate_run
from proxy.accounting.estimate.tokenizer import counter_for_model, is_loaded
from proxy.accounting.pricing import PriceTable
from proxy.accounting.sources.assistants.fetch import RunFetcher
from proxy.accounting.sources.assistants.rows import RunRow, run_row, to_datetime
from proxy.accounting.sources.assistants.sightings import dump_run, is_terminal
from proxy.accounting.usage import ASSISTANTS_RUN
from proxy.db import jobs, mappings
from proxy.db.models import utcnow
from proxy.errors import FetchError
from proxy.forwarding.decode import parse_json
from proxy.keys import CredentialStore, replay_request

__all__ = [
    "WAIT",
    "Failures",
    "Follow",
    "Retry",
    "RunCollect",
    "Shield",
    "Wait",
    "follow_delay",
    "scoped_headers",
]

_log = logging.getLogger("proxy.accounting.collector")

_SCOPE_HEADERS = ("openai-project", "openai-organization", "openai-beta")
_ASSISTANTS_BETA = "assistants=v2"
# Bytes of run, steps and messages up to which a run is estimated on the event loop (~0.1-0.3 ms
# of tokenizing at most); larger runs go to a thread.
_INLINE_ESTIMATE = 8192
# Following a run in progress: retrieved again after half its age, within these bounds, so a
# long run costs a few dozen retrieves at most; and recorded as it stands once this long past
# its expires_at (the API should have expired it by then).
_FOLLOW_MIN = 1.0
_FOLLOW_MAX = 30.0
_EXPIRY_GRACE = dt.timedelta(seconds=60)

_T = TypeVar("_T")
# A collection failure: (reason, how many runs).
Failures = Callable[[str, int], None]
Shield = Callable[[Awaitable[_T]], Awaitable[_T]]


class Wait:
    """The job's key is not in memory here: give the job back until it is seen again."""


WAIT: Final = Wait()


@dataclass(frozen=True, slots=True)
class Retry:
    """Try the job again later: after backoff, or after `retry_after` seconds."""

    error: str
    retry_after: float | None


@dataclass(frozen=True, slots=True)
class Follow:
    """The run is still in progress: keep `object_json`, retrieve it again in `delay` seconds."""

    object_json: str
    delay: float


def follow_delay(created_at: dt.datetime, now: dt.datetime) -> float:
    """Seconds until a run in progress is retrieved again: half the age of its job, bounded."""
    age = (now - created_at).total_seconds()
    return min(_FOLLOW_MAX, max(_FOLLOW_MIN, age / 2))


def _past_expiry(run: dict[str, Any], now: dt.datetime) -> bool:
    expires = to_datetime(run.get("expires_at"))
    return expires is not None and now > expires + _EXPIRY_GRACE


class RunCollect:
    kind = ASSISTANTS_RUN  # the jobs it collects, and the rows they become

    def __init__(
        self,
        sm: Callable[[], async_sessionmaker[AsyncSession]],
        fetcher: RunFetcher,
        credentials: CredentialStore,
        prices: PriceTable,
        constants: ConstantsTable,
        failed: Failures,
        *,
        max_attempts: int = 20,
    ) -> None:
        self._sm = sm
        self._fetcher = fetcher
        self._credentials = credentials
        self._prices = prices
        self._constants = constants
        self._failed = failed
        self._max_attempts = max_attempts

    async def __call__(self, job: jobs.ClaimedJob, db: Shield) -> RunRow | Retry | Wait | Follow:
        """The run's row; or WAIT when the job's key is not in memory (the collector gives the
        job back until it is), a Retry, or Follow while the run is in progress. `db` runs a
        database operation shielded from cancellation (see the collector)."""
        run = parse_json(job.object_json)
        gave_up = job.attempts >= self._max_attempts
        headers = self._credentials.get(job.key_fingerprint) if job.key_fingerprint else None
        estimate: RunEstimate | None = None
        if job.in_progress and not gave_up:
            if headers is None:
                return WAIT
            try:
                run = await self._retrieve(job, headers)
            except FetchError as exc:
                self._failed(_reason(exc), 1)
                if exc.retryable:
                    _log.warning("retrieving run %s: %s; will retry", job.object_id, exc)
                    return Retry(str(exc), exc.retry_after)
                # Refused for good (the thread was deleted, the key revoked): what is known.
                _log.warning("retrieving run %s: %s; recording it as seen", job.object_id, exc)
                gave_up = True
            else:
                now = utcnow()
                if not is_terminal(run) and not _past_expiry(run, now):
                    return Follow(dump_run(run), follow_delay(job.created_at, now))
        if gave_up:
            # Retrying for ever would keep the job (and its cost) unrecorded for good.
            _log.warning(
                "run %s: %d attempts failed (last: %s); recording the run alone",
                job.object_id,
                job.attempts,
                job.last_error,
            )
            estimate = await self._estimate_from(run, [], [], len(job.object_json))
        elif headers is None:
            if not job.has_reported_usage:
                # The key expired since the claim (or lives in another replica): wait for it.
                return WAIT
            _log.info(
                "recording run %s from its reported usage alone (key not seen)", job.object_id
            )
        else:
            try:
                estimate = await self._estimate(job, run, _scoped(headers, job))
            except FetchError as exc:
                self._failed(_reason(exc), 1)
                if exc.retryable:
                    _log.warning("fetching run %s: %s; will retry", job.object_id, exc)
                    return Retry(str(exc), exc.retry_after)
                _log.warning("fetching run %s: %s; recording the run alone", job.object_id, exc)
                estimate = await self._estimate_from(run, [], [], len(job.object_json))
        team = job.team
        if team is None:
            # Not known when the run was seen (database down then): the mapping decides now.
            team = await db(
                mappings.team_for(self._sm(), fingerprint=job.key_fingerprint, project=job.project)
            )
        who = Attribution(
            job.key_fingerprint, job.key_hint, team, job.tag, job.project, job.organization
        )
        return run_row(run, who, estimate, self._prices, utcnow(), gave_up=gave_up)

    async def _retrieve(self, job: jobs.ClaimedJob, headers: Mapping[str, str]) -> dict[str, Any]:
        scoped, query = replay_request(_scoped(headers, job), job.api_query)
        run = await self._fetcher.retrieve(
            job.api_prefix, query, job.thread_id or "", job.object_id, scoped
        )
        if run.get("id") != job.object_id or run.get("object") != "thread.run":
            raise FetchError(f"GET run {job.object_id}: not the run")
        return run

    async def _estimate(
        self, job: jobs.ClaimedJob, run: dict[str, Any], headers: Mapping[str, str]
    ) -> RunEstimate:
        tools = run.get("tools") if isinstance(run.get("tools"), list) else []
        # The stored query has no credential: one that came in the query is replayed from
        # memory, as the headers are.
        headers, query = replay_request(headers, job.api_query)
        got = await self._fetcher.run(
            job.api_prefix,
            query,
            job.thread_id,
            job.object_id,
            headers,
            file_search_results=any(
                isinstance(t, dict) and t.get("type") == "file_search" for t in tools
            ),
        )
        size = got.nbytes + len(job.object_json)
        return await self._estimate_from(run, got.steps, got.messages, size)

    async def _estimate_from(
        self,
        run: dict[str, Any],
        steps: list[dict[str, Any]],
        messages: list[dict[str, Any]],
        nbytes: int,
    ) -> RunEstimate:
        count = counter_for_model(run.get("model"))
        if nbytes <= _INLINE_ESTIMATE and is_loaded(run.get("model")):
            # A typical run's estimate takes well under a millisecond: cheaper on the loop
            # than handing it to a thread, whose GIL hand-over can hold the loop up to the
            # switch interval (5 ms) when the loop is busy. The first estimate with an
            # encoding loads it (most of a second), so that one goes to the executor.
            return estimate_run(run, steps, messages, count, self._constants)
        # Much text: tokenizing is CPU work (tiktoken releases the GIL), off the event loop.
        return await asyncio.get_running_loop().run_in_executor(
            None, estimate_run, run, steps, messages, count, self._constants
        )


def _scoped(headers: Mapping[str, str], job: jobs.ClaimedJob) -> dict[str, str]:
    return scoped_headers(headers, job.project, job.organization)


def scoped_headers(
    headers: Mapping[str, str], project: str | None, organization: str | None
) -> dict[str, str]:
    """The key's headers (from its latest request) fitted to this run: the project and
    organization of the request the run was seen in, since the latest one may have named
    another project, where the thread is unknown; and the Assistants beta header, which the
    latest request (say, a chat completion) may not have carried, and without which the API
    refuses the fetch."""
    scoped = {k: v for k, v in headers.items() if k.lower() not in _SCOPE_HEADERS}
    if project:
        scoped["OpenAI-Project"] = project
    if organization:
        scoped["OpenAI-Organization"] = organization
    beta = next((v for k, v in headers.items() if k.lower() == "openai-beta"), "")
    scoped["OpenAI-Beta"] = beta if "assistants=" in beta else _ASSISTANTS_BETA
    return scoped


def _reason(exc: FetchError) -> str:
    if exc.status is None:
        return "network"
    return "rate_limited" if exc.status == 429 else f"http_{exc.status // 100}xx"
