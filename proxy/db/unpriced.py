"""Usage rows without a price (cost_usd NULL): what is missing, and setting their cost once a
price exists. Pricing itself is the caller's (proxy.accounting.pricing.reprice): this module
reads and writes columns only."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db import rollup
from proxy.db.billing import ADJUSTMENT
from proxy.db.engine import reading
from proxy.db.models import UsageRecord
from proxy.db.queries import between

__all__ = ["PRICED_FIELDS", "priceable_rows", "set_costs", "unpriced_models"]

_U = UsageRecord
# What a row's cost is computed from.
PRICED_FIELDS = (
    "id",
    "model",
    "occurred_at",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "code_interpreter_sessions",
    "file_search_calls",
    "web_search_calls",
    "web_search_preview_calls",
    "kind",
    "estimate_basis",
    "cost_usd",
)


async def unpriced_models(
    sm: async_sessionmaker[AsyncSession],
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """Per model (None included), the unpriced rows: events, tokens and tool counts, and the
    first and last time one occurred; most events first."""
    stmt = (
        select(
            _U.model,
            func.count().label("events"),
            func.sum(_U.prompt_tokens).label("prompt_tokens"),
            func.sum(_U.completion_tokens).label("completion_tokens"),
            func.sum(_U.code_interpreter_sessions).label("code_interpreter_sessions"),
            func.sum(_U.file_search_calls).label("file_search_calls"),
            func.sum(_U.web_search_calls).label("web_search_calls"),
            func.min(_U.occurred_at).label("first_seen"),
            func.max(_U.occurred_at).label("last_seen"),
        )
        .where(_U.cost_usd.is_(None))
        .group_by(_U.model)
        .order_by(func.count().desc(), _U.model)
    )
    async with reading(sm) as session:
        rows = [dict(r) for r in (await session.execute(between(stmt, since, until))).mappings()]
    for row in rows:
        for name in ("prompt_tokens", "completion_tokens", "code_interpreter_sessions"):
            row[name] = int(row[name] or 0)
        for name in ("file_search_calls", "web_search_calls"):
            row[name] = int(row[name] or 0)
        for name in ("first_seen", "last_seen"):
            row[name] = _aware(row[name])
    return rows


def _aware(value: Any) -> Any:
    # min()/max() come back untyped: SQLite gives text, PostgreSQL an aware datetime.
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value


async def priceable_rows(
    session: AsyncSession,
    since: dt.datetime | None,
    until: dt.datetime | None,
    *,
    model: str | None = None,
    only_unpriced: bool = True,
) -> list[dict[str, Any]]:
    """The rows to price again (PRICED_FIELDS), in the caller's transaction."""
    # A reconciliation's adjustment is money, not usage: never priced again.
    stmt = (
        select(*(_U.__table__.c[c] for c in PRICED_FIELDS))
        .where(_U.kind != ADJUSTMENT)
        .order_by(_U.id)
    )
    if only_unpriced:
        stmt = stmt.where(_U.cost_usd.is_(None))
    if model is not None:
        stmt = stmt.where(_U.model == model)
    result = await session.execute(between(stmt, since, until))
    return [dict(r) for r in result.mappings()]


_SET_COST = (
    update(_U.__table__)
    .where(_U.__table__.c.id == bindparam("i"))
    .values(cost_usd=bindparam("c"))
    .execution_options(synchronize_session=False)
)


_ROLLUP_ROWS = select(_U.__table__.c.id, *(_U.__table__.c[c] for c in rollup.ROW_FIELDS)).where(
    _U.__table__.c.id.in_(bindparam("ids", expanding=True))
)
_CHUNK = 5000


async def set_costs(session: AsyncSession, costs: Sequence[tuple[int, Any]]) -> None:
    """Set cost_usd of rows by id, in the caller's transaction, and move the rollup's cells
    from the old costs to the new."""
    for start in range(0, len(costs), _CHUNK):
        chunk = dict(costs[start : start + _CHUNK])
        tally = rollup.Tally()
        for row in await session.execute(_ROLLUP_ROWS, {"ids": list(chunk)}):
            old = tuple(row[1:])
            tally.add(old, -1)
            tally.add((*old[:-1], chunk[row[0]]))
        await session.execute(_SET_COST, [{"i": i, "c": c} for i, c in chunk.items()])
        await rollup.apply(session, tally)
