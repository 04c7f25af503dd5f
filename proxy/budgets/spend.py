"""Every budget's status now, from the database: the budgets, and their subjects' spend in
their current periods, at most one query per subject kind and period (so the cost does not grow
with the number of budgets, only with the rows of the period)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.budgets.periods import bounds
from proxy.budgets.spec import BudgetRule, parse_warn
from proxy.budgets.status import BudgetStatus, evaluate
from proxy.db import budgets as db_budgets
from proxy.db.models import Budget

__all__ = ["current_statuses", "rule_of"]


def rule_of(row: Budget) -> BudgetRule:
    return BudgetRule(
        id=row.id,
        subject_kind=row.subject_kind,
        subject=row.subject,
        key_hint=row.key_hint,
        limit_usd=row.limit_usd,
        period=row.period,
        warn=parse_warn(row.warn),
        enforce=row.enforce,
    )


async def current_statuses(
    sm: async_sessionmaker[AsyncSession], now: dt.datetime
) -> list[BudgetStatus]:
    """The status of every budget at `now`, in budget id order."""
    rules = [rule_of(row) for row in await db_budgets.list_budgets(sm)]
    groups: dict[tuple[str, str], set[str]] = defaultdict(set)
    for rule in rules:
        groups[(rule.subject_kind, rule.period)].add(rule.subject)
    spends: dict[tuple[str, str], dict[str, Decimal]] = {}
    for (kind, period), subjects in groups.items():
        start, end = bounds(period, now)
        spends[(kind, period)] = await db_budgets.spend_by_subject(sm, kind, subjects, start, end)
    return [
        evaluate(r, spends[(r.subject_kind, r.period)].get(r.subject, Decimal(0)), now)
        for r in rules
    ]
