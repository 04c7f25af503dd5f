"""Turning an observed or collected object into a usage row. Pure: no I/O.

`run_row` prices an Assistants run from its reported usage or the estimate; code interpreter
sessions are priced by the database transaction that counts them (see proxy.db.run_usage)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import orjson

from proxy.accounting.attribution import Attribution
from proxy.accounting.estimate.runs import RunEstimate
from proxy.accounting.pricing import PriceTable, Usage, cost_of
from proxy.accounting.usage import UsageRow
from proxy.db.run_usage import RunUsage

__all__ = ["RunRow", "occurred_at", "run_row", "to_datetime"]

_TIME_FIELDS = ("completed_at", "failed_at", "cancelled_at", "expired_at", "incomplete_at")


def to_datetime(value: object) -> dt.datetime | None:
    # A tuple, not `int | float`: that union would be built anew on every call.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return dt.datetime.fromtimestamp(value, dt.UTC)


def occurred_at(obj: Mapping[str, Any], now: dt.datetime) -> dt.datetime:
    """When a run ended: its completed/failed/cancelled/expired time, else now."""
    for name in _TIME_FIELDS:
        when = to_datetime(obj.get(name))
        if when is not None:
            return when
    return now


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _basis_text(estimate: RunEstimate | None) -> str | None:
    basis = estimate.basis_json() if estimate else None
    return None if basis is None else orjson.dumps(basis).decode()


# A run's row plus what the recording transaction needs to count and price its sessions.
RunRow = RunUsage


def run_row(
    run: Mapping[str, Any],
    who: Attribution,
    estimate: RunEstimate | None,
    prices: PriceTable,
    now: dt.datetime,
    *,
    gave_up: bool = False,
) -> RunRow:
    """The row for a terminal run. Reported usage wins; the estimate is always kept beside it.
    `gave_up`: collection ran out of attempts, so the row stands on the run alone and says so
    in its usage_source, whatever the tokens came from."""
    when = occurred_at(run, now)
    reported = run.get("usage") if isinstance(run.get("usage"), dict) else None
    if reported is not None:
        prompt = _int(reported.get("prompt_tokens"))
        completion = _int(reported.get("completion_tokens"))
        details = reported.get("prompt_tokens_details") or {}
        cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
        source = "reported"
    else:
        prompt = estimate.prompt_tokens if estimate else 0
        completion = estimate.completion_tokens if estimate else 0
        cached = 0
        source = "estimated"
    model = run.get("model") if isinstance(run.get("model"), str) else None
    file_search = estimate.file_search_calls if estimate else 0
    cost = cost_of(
        prices,
        model,
        when,
        Usage(
            prompt_tokens=prompt,
            cached_tokens=cached,
            completion_tokens=completion,
            file_search_calls=file_search,
        ),
    )
    row = UsageRow(
        kind="assistants.run",
        object_id=str(run["id"]),
        thread_id=run.get("thread_id"),
        assistant_id=run.get("assistant_id"),
        model=model,
        status=run.get("status"),
        occurred_at=when,
        **who.columns(),
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_tokens=cached,
        usage_source="gave_up" if gave_up else source,
        estimated_prompt_tokens=estimate.prompt_tokens if estimate else None,
        estimated_completion_tokens=estimate.completion_tokens if estimate else None,
        estimator=estimate.estimator or None if estimate else None,
        estimate_basis=_basis_text(estimate),
        code_interpreter_calls=estimate.code_interpreter_calls if estimate else 0,
        file_search_calls=file_search,
        function_calls=estimate.function_calls if estimate else 0,
        cost_usd=cost.total,
    )
    times = tuple(
        t
        for t in (
            to_datetime(s) for s in (estimate.code_interpreter_call_times if estimate else ())
        )
        if t is not None
    )
    return RunRow(row, times, prices.tool_price("code_interpreter_session", when))
