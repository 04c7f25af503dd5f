"""The domain's usage row (what one billable event cost, and who pays), and UsageRecorded, the
one signal that usage was recorded.

Rows are built by the pure row builders of each source and recorded by proxy.db.usage (exactly
once). Both writers (the row writer, and the collector, in whichever process it runs) emit one
UsageRecorded per committed transaction, to a UsageSink; metrics subscribe to it (budgets and
the dashboard will). It is per batch, not per row: a signal per row cost as much as a fifth of
writing the row, and a collector process relaying a line per run made the serving process read
thousands of lines a second (bench/README.md)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from proxy.db.mappings import UNASSIGNED

__all__ = [
    "ASSISTANTS_RUN",
    "UNASSIGNED",
    "UsageRecorded",
    "UsageRow",
    "UsageSignal",
    "UsageSink",
    "UsageTotal",
    "row_from",
    "row_template",
]

_log = logging.getLogger("proxy.accounting.usage")
_ZERO = Decimal(0)

# The kind of an Assistants run's row (the collector's); the other kinds are the API's objects.
ASSISTANTS_RUN = "assistants.run"


# Not frozen: a frozen dataclass of 29 fields costs ~8x as much to build (object.__setattr__
# per field), and a row is built for every recorded request (bench/README.md). Rows are values
# all the same: nothing changes one after it is built (dataclasses.replace makes a new one).
# Not slots either: `row_from` builds a row from a dict.
@dataclass(kw_only=True)
class UsageRow:
    """The content of one usage_records row (see proxy.db.models.UsageRecord;
    proxy.db.usage.USAGE_FIELDS are its fields)."""

    kind: str
    object_id: str
    occurred_at: dt.datetime
    usage_source: str
    thread_id: str | None = None
    assistant_id: str | None = None
    conversation_id: str | None = None
    prompt_id: str | None = None
    model: str | None = None
    status: str | None = None
    key_fingerprint: str | None = None
    key_hint: str | None = None
    team: str = UNASSIGNED
    tag: str | None = None
    project: str | None = None
    organization: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    estimated_prompt_tokens: int | None = None
    estimated_completion_tokens: int | None = None
    estimator: str | None = None
    estimate_basis: str | None = None
    code_interpreter_calls: int = 0
    code_interpreter_sessions: int = 0
    file_search_calls: int = 0
    web_search_calls: int = 0
    web_search_preview_calls: int = 0
    function_calls: int = 0
    deployment: str | None = None
    # None: the model or a tool it used had no price in force ("unpriced"), never a silent 0.
    cost_usd: Decimal | None = Decimal(0)


_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(UsageRow) if f.default is not dataclasses.MISSING
}
_new = object.__new__


def row_template(**values: Any) -> dict[str, Any]:
    """Every field of a UsageRow: its defaults updated with `values`. For `row_from`."""
    return _DEFAULTS | values


def row_from(values: dict[str, Any]) -> UsageRow:
    """The UsageRow of `values`, a copy of a `row_template` with the row's own values set; the
    row takes the dict over. About a third of what `UsageRow(...)` with keywords costs, for the
    row built per request. The fields are not checked: the template holds them all."""
    row = _new(UsageRow)
    row.__dict__ = values
    return row


@dataclass(frozen=True, slots=True)
class UsageTotal:
    """The rows of one (kind, usage_source, team, model) in one UsageRecorded, summed.
    `cost_usd` sums the priced rows; `unpriced` counts the rows without a price."""

    kind: str
    usage_source: str
    team: str
    model: str | None
    events: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    unpriced: int = 0


@dataclass(frozen=True, slots=True)
class UsageRecorded:
    """Usage rows that one transaction committed (only those it inserted), summed."""

    totals: tuple[UsageTotal, ...]

    @classmethod
    def of(cls, rows: Iterable[UsageRow]) -> UsageRecorded:
        sums: dict[tuple[str, str, str, str | None], list[Any]] = {}
        for row in rows:
            key = (row.kind, row.usage_source, row.team, row.model)
            acc = sums.get(key)
            if acc is None:
                acc = sums[key] = [0, 0, 0, _ZERO, 0]
            acc[0] += 1
            acc[1] += row.prompt_tokens
            acc[2] += row.completion_tokens
            if row.cost_usd is None:
                acc[4] += 1
            else:
                acc[3] += row.cost_usd
        return cls(tuple(UsageTotal(*key, *acc) for key, acc in sums.items()))


UsageSink = Callable[[UsageRecorded], None]


class UsageSignal:
    """A UsageSink that hands each UsageRecorded to every subscriber, in order. A subscriber
    that raises is logged with its traceback and the others still run (fail open: what was
    recorded is in the database whatever a subscriber does)."""

    def __init__(self) -> None:
        self._sinks: list[UsageSink] = []

    def subscribe(self, sink: UsageSink) -> None:
        self._sinks.append(sink)

    def __call__(self, event: UsageRecorded) -> None:
        for sink in self._sinks:
            try:
                sink(event)
            except Exception:
                _log.exception("a usage subscriber failed")
