"""The metrics' subscription to UsageRecorded: Assistants runs counted by where their usage
came from (reported or estimated), other events by kind, tokens and cost per team and model."""

from __future__ import annotations

from collections import Counter
from typing import Any

from proxy.accounting.usage import ASSISTANTS_RUN, UsageRecorded
from proxy.metrics import Metrics

__all__ = ["UsageMetrics"]


class UsageMetrics:
    """A UsageSink that counts into `metrics`; one increment per label set and batch."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def __call__(self, event: UsageRecorded) -> None:
        runs: Counter[str] = Counter()
        kinds: Counter[str] = Counter()
        usage: dict[tuple[str | None, str | None], list[Any]] = {}
        for t in event.totals:
            if t.kind == ASSISTANTS_RUN:
                runs[t.usage_source] += t.events
            else:
                kinds[t.kind] += t.events
            acc = usage.get((t.team, t.model))
            if acc is None:
                usage[(t.team, t.model)] = [t.prompt_tokens, t.completion_tokens, t.cost_usd]
            else:
                acc[0] += t.prompt_tokens
                acc[1] += t.completion_tokens
                acc[2] += t.cost_usd
        m = self._metrics
        for kind, n in kinds.items():
            m.recorded(kind, n)
        for source, n in runs.items():
            m.run_recorded(source, n)
        for (team, model), (prompt, completion, cost) in usage.items():
            m.usage(team, model, prompt, completion, cost)
