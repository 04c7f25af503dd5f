"""Enforcement: the forwarding Policy (proxy.forwarding.policy) that refuses a request whose
team, key or project has reached the limit of an enforced budget, with a 429 in OpenAI's error
format (type insufficient_quota, code budget_exceeded) and `x-should-retry: false`, which the
openai SDKs obey (they would retry a 429 otherwise).

Per request it reads the tracker's last state (refreshed from the database at least every
budget_refresh_interval, so shared by every replica, never a per-process count). With no
budget refusing, that is one dictionary test; only then is the request attributed, by the
accounting's own attributor (cached per key and headers). Fail open: a request whose team
cannot be worked out (database down) is judged by its key and project only."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping

from proxy.accounting.attribution import Attribution
from proxy.budgets.message import refusal_message
from proxy.budgets.status import BudgetStatus
from proxy.forwarding.policy import Refusal, RequestMeta
from proxy.metrics import Metrics

__all__ = ["BudgetPolicy", "refusal_for"]

Attribute = Callable[..., Awaitable[Attribution]]
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


class BudgetPolicy:
    """Refuses the requests of subjects in `refusing` ((kind, subject) -> the status that
    refuses them), which the tracker replaces as a whole after each refresh."""

    def __init__(self, attribute: Attribute, metrics: Metrics) -> None:
        self._attribute = attribute
        self._metrics = metrics
        self.refusing: Mapping[tuple[str, str], BudgetStatus] = {}

    async def refusal(self, meta: RequestMeta) -> Refusal | None:
        refusing = self.refusing
        if not refusing:
            return None
        who = await self._attribute(meta.sent, meta.received, keep=False, query=meta.query_string)
        for kind, subject in (
            ("key", who.key_fingerprint),
            ("team", who.team),
            ("project", who.project),
        ):
            if subject is None:
                continue
            status = refusing.get((kind, subject))
            if status is not None:
                self._metrics.budget_refused(status.rule.id)
                return refusal_for(status)
        return None
