"""Enforcement: the forwarding Policy (proxy.forwarding.policy) that refuses a request whose
team, key or project has reached the limit of an enforced budget, with a 429 in OpenAI's error
format (type insufficient_quota, code budget_exceeded) and `x-should-retry: false`, which the
openai SDKs obey (they would retry a 429 otherwise).

Per request it reads the tracker's last state (refreshed from the database at least every
budget_refresh_interval, so shared by every replica, never a per-process count). With no
budget refusing or near its limit, that is one dictionary test; only then is the request
attributed, by the accounting's own attributor (cached per key and headers), and a subject
with neither costs one more lookup. Fail open: a request whose team cannot be worked out
(database down) is judged by its key and project only.

Strict mode (proxy.budgets.near): a request whose subject has an enforced budget near its
limit is admitted only after a read of that budget's spend that began after the request
arrived (proxy.budgets.fresh: shared, bounded, fail open to the last refresh). A read that
shows the limit reached makes this replica refuse the subject at once, without waiting for
the next refresh; a refusal is always a spend read from the database at or past the limit."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping

from proxy.accounting.attribution import Attribution
from proxy.budgets.fresh import FreshReads
from proxy.budgets.message import refusal_message
from proxy.budgets.status import BudgetStatus
from proxy.forwarding.policy import Refusal, RequestMeta
from proxy.metrics import Metrics

__all__ = ["BudgetPolicy", "Subject", "refusal_for", "subjects_of"]

Attribute = Callable[..., Awaitable[Attribution]]
Subject = tuple[str, str]  # (subject kind, subject)
_HEADERS = {"x-should-retry": "false"}


def refusal_for(status: BudgetStatus) -> Refusal:
    body = {
        "error": {
            "message": refusal_message(status),
            "type": "insufficient_quota",
            "param": None,
            "code": "budget_exceeded",
        }
    }
    return Refusal(429, json.dumps(body).encode(), _HEADERS, by=f"budget {status.rule.id}")


def subjects_of(who: Attribution) -> list[Subject]:
    """The subjects a request is attributed to, that budgets may name."""
    pairs = (("key", who.key_fingerprint), ("team", who.team), ("project", who.project))
    return [(kind, subject) for kind, subject in pairs if subject is not None]


class BudgetPolicy:
    """Refuses the requests of subjects in `refusing` (subject -> the status that refuses
    them), and admits those of subjects in `near` (subject -> its enforced budgets near their
    limit) on a fresh read (`fresh`; None: strict mode off). The tracker replaces both after
    each refresh (`publish`)."""

    def __init__(
        self, attribute: Attribute, metrics: Metrics, fresh: FreshReads | None = None
    ) -> None:
        self._attribute = attribute
        self._metrics = metrics
        self._fresh = fresh
        self.refusing: Mapping[Subject, BudgetStatus] = {}
        self.near: Mapping[Subject, tuple[BudgetStatus, ...]] = {}
        # Refusals found by fresh reads: subject -> (status, when found: time.monotonic()).
        self._found: dict[Subject, tuple[BudgetStatus, float]] = {}

    def publish(
        self,
        refusing: Mapping[Subject, BudgetStatus],
        near: Mapping[Subject, tuple[BudgetStatus, ...]],
        as_of: float,
    ) -> None:
        """The state of a refresh that began at `as_of` (time.monotonic()). A refusal a fresh
        read found after that stays: the refresh began before it and could not see it."""
        found = {s: f for s, f in self._found.items() if f[1] > as_of and s not in refusing}
        self._found = found
        self.refusing = {**refusing, **{s: status for s, (status, _) in found.items()}}
        self.near = {s: n for s, n in near.items() if s not in self.refusing}
        if self._fresh is not None:
            self._fresh.keep({status.rule.id for n in self.near.values() for status in n})

    async def refusal(self, meta: RequestMeta) -> Refusal | None:
        if not self.refusing and not self.near:
            return None
        who = await self._attribute(meta.sent, meta.received, keep=False, query=meta.query_string)
        subjects = subjects_of(who)
        status = next(filter(None, map(self.refusing.get, subjects)), None)
        if status is None and self._fresh is not None:
            for subject in subjects:
                near = self.near.get(subject)
                if near and (status := await self._fresh_refusal(subject, near)) is not None:
                    break
        if status is None:
            return None
        self._metrics.budget_refused(status.rule.id)
        return refusal_for(status)

    async def _fresh_refusal(
        self, subject: Subject, statuses: tuple[BudgetStatus, ...]
    ) -> BudgetStatus | None:
        assert self._fresh is not None
        for cached in statuses:
            status = await self._fresh.status(cached)
            if status.refusing:
                # Refuse on this replica from now on, not from the next refresh.
                self._found[subject] = (status, time.monotonic())
                self.refusing = {**self.refusing, subject: status}
                self.near = {s: n for s, n in self.near.items() if s != subject}
                return status
        return None
