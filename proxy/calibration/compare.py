"""Estimates beside reported usage, and their errors per kind and model family. Pure."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.accounting.estimate.constants import ConstantsTable, family_for_model
from proxy.accounting.estimate.runs import RunBasis
from proxy.calibration.recorded import RecordedRun

__all__ = ["Compared", "Summary", "compare", "summarise"]


@dataclass(frozen=True)
class Compared:
    id: str
    kind: str
    family: str
    complete: bool
    prompt: int
    completion: int
    reported: tuple[int, int] | None

    def error(self, what: str) -> float | None:
        """(estimate - reported) / reported, for "prompt" or "completion"; None if unknown."""
        if self.reported is None:
            return None
        got, want = (
            (self.prompt, self.reported[0])
            if what == "prompt"
            else (
                self.completion,
                self.reported[1],
            )
        )
        if want == 0:
            return 0.0 if got == 0 else None
        return (got - want) / want

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "reported_prompt_tokens": self.reported[0] if self.reported else None,
            "reported_completion_tokens": self.reported[1] if self.reported else None,
        }


def compare(recorded: RecordedRun, basis: RunBasis, table: ConstantsTable) -> Compared:
    constants = table.for_model(recorded.model)
    return Compared(
        id=recorded.id,
        kind=recorded.kind,
        family=family_for_model(recorded.model),
        complete=recorded.complete,
        prompt=basis.prompt.value(constants),
        completion=basis.completion.value(constants),
        reported=recorded.reported,
    )


@dataclass(frozen=True)
class Summary:
    """Median and maximum |error| of one group's runs that reported usage."""

    group: str
    runs: int
    prompt_median: float
    prompt_max: float
    completion_median: float
    completion_max: float


def summarise(results: Iterable[Compared], key: Any = None) -> list[Summary]:
    """One summary per group (default: kind and family), then one for all, of the runs that
    carry reported usage."""
    key = key or (lambda c: f"{c.kind} {c.family}" + ("" if c.complete else " (partial)"))
    groups: dict[str, list[Compared]] = {}
    scored = [c for c in results if c.reported is not None]
    for c in scored:
        groups.setdefault(key(c), []).append(c)
    out = [_summary(name, runs) for name, runs in sorted(groups.items())]
    if scored:
        out.append(_summary("all", scored))
    return out


def _summary(name: str, runs: Sequence[Compared]) -> Summary:
    p = [abs(e) for c in runs if (e := c.error("prompt")) is not None]
    c_ = [abs(e) for c in runs if (e := c.error("completion")) is not None]
    return Summary(
        group=name,
        runs=len(runs),
        prompt_median=statistics.median(p) if p else 0.0,
        prompt_max=max(p, default=0.0),
        completion_median=statistics.median(c_) if c_ else 0.0,
        completion_max=max(c_, default=0.0),
    )


def by_id(results: Iterable[Compared]) -> Mapping[str, Compared]:
    return {c.id: c for c in results}
