"""True-up: each project-day's residual (billed - recorded) allocated to the teams in
proportion to their recorded cost that day, written as adjustment rows (usage_records of
kind `adjustment`) linked to one Reconciliation of the month. Original rows never change.

A project-day with billed cost but nothing recorded (traffic that bypassed the proxy) goes to
the project's team (`projects add`), else `unassigned`. Shares are computed in the money
column's unit (1e-10 USD) with the largest remainder, so the adjustments of a project-day add
up to its residual exactly, and a month's per-team totals add up to the bill.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.billing import (
    billed_rows,
    billing_keys,
    delete_adjustments,
    recorded_rows,
    write_adjustments,
)
from proxy.db.mappings import list_project_teams
from proxy.reconcile.matching import KeyIndex
from proxy.reconcile.query import ReconcileQuery
from proxy.reports.render import render

__all__ = ["TrueUpError", "allocate", "plan", "true_up", "undo"]

_UNIT = Decimal("1e-10")
_COLUMNS = ("day", "project", "team", "adjustment_usd")


class TrueUpError(Exception):
    """The true-up cannot be done as asked (one line for the user)."""


def allocate(
    recorded: Mapping[str, Decimal], residual: Decimal, fallback: str
) -> dict[str, Decimal]:
    """`residual` split over the teams in proportion to `recorded` (their non-negative cost),
    to 1e-10 exactly: the shares add up to `residual`. With nothing recorded, all to
    `fallback`."""
    units = int((residual / _UNIT).to_integral_value())
    weights = {t: int(v / _UNIT) for t, v in recorded.items() if v > 0}
    total = sum(weights.values())
    if total == 0:
        return {fallback: Decimal(units) * _UNIT} if units else {}
    sign = -1 if units < 0 else 1
    shares = {t: abs(units) * w // total for t, w in weights.items()}
    rest = abs(units) - sum(shares.values())
    by_remainder = sorted(weights, key=lambda t: (-(abs(units) * weights[t] % total), t))
    for team in by_remainder[:rest]:
        shares[team] += 1
    return {t: sign * s * _UNIT for t, s in shares.items() if s}


def plan(
    recorded: list[Mapping[str, Any]],
    billed: list[Any],
    keys: KeyIndex,
    project_teams: Mapping[str, str],
) -> list[dict[str, Any]]:
    """Adjustment rows (day, project, team, amount) for the given recorded and billed rows."""
    teams: dict[tuple[str, str | None], dict[str, Decimal]] = {}
    billed_sum: dict[tuple[str, str | None], Decimal] = {}
    for row in recorded:
        project = keys.recorded(row["project"], row["key_hint"]).project
        by_team = teams.setdefault((row["day"], project), {})
        by_team[row["team"]] = by_team.get(row["team"], Decimal(0)) + row["cost_usd"]
    for row in billed:
        if row.currency != "usd":
            continue
        project = keys.billed(row.project, row.api_key_id).project
        billed_sum[(row.day, project)] = billed_sum.get((row.day, project), Decimal(0)) + row.amount
    out = []
    for key in sorted(set(teams) | set(billed_sum), key=lambda k: (k[0], k[1] or "")):
        by_team = teams.get(key, {})
        residual = billed_sum.get(key, Decimal(0)) - sum(by_team.values(), Decimal(0))
        fallback = project_teams.get(key[1] or "", "unassigned")
        for team, amount in sorted(allocate(by_team, residual, fallback).items()):
            out.append({"day": key[0], "project": key[1], "team": team, "amount": amount})
    return out


async def true_up(
    sm: async_sessionmaker[AsyncSession], query: ReconcileQuery, *, dry_run: bool = False
) -> str:
    """Plan the month's adjustments and write them (unless `dry_run`); the rendered plan and
    a summary line. Raises TrueUpError when the month has no billed costs or was trued up."""
    month = query.month
    if month is None:
        raise TrueUpError("--true-up works on one whole month (--month YYYY-MM)")
    billed = await billed_rows(sm, query.since.isoformat(), query.until.isoformat())
    if not billed:
        raise TrueUpError(f"no billed costs for {month}: run `usage-proxy billing pull` first")
    since = dt.datetime.combine(query.since, dt.time(), dt.UTC)
    until = dt.datetime.combine(query.until, dt.time(), dt.UTC)
    recorded = await recorded_rows(sm, since, until)
    keys = KeyIndex(await billing_keys(sm))
    project_teams = {p.project: p.team for p in await list_project_teams(sm)}
    rows = plan(recorded, billed, keys, project_teams)
    total = sum((r["amount"] for r in rows), Decimal(0))
    shown = render(
        [{**r, "adjustment_usd": r["amount"]} for r in rows], _COLUMNS, query.fmt, totals=True
    )
    if dry_run:
        return shown + f"dry run: {len(rows)} adjustment rows for {month}, {total} USD\n"
    rid = await write_adjustments(sm, month, rows)
    if rid is None:
        raise TrueUpError(f"{month} is already trued up: `--undo --month {month}` first")
    return shown + f"reconciliation {rid}: {len(rows)} adjustment rows for {month}, {total} USD\n"


async def undo(sm: async_sessionmaker[AsyncSession], month: str) -> int:
    """Remove the month's adjustment rows; how many."""
    return await delete_adjustments(sm, month)
