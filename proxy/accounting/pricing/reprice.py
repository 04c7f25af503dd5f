"""Pricing recorded usage again once a price exists: `usage-proxy reprice` and `usage-proxy
prices missing`. Rows are priced with `cost_of` exactly as when they were recorded, at the
prices in force when they occurred; a change is written with its audit_log row in one
transaction."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.pricing.containers import session_cost
from proxy.accounting.pricing.cost import Usage, cost_of
from proxy.accounting.pricing.table import TOOLS, PriceTable
from proxy.db.audit import add_entry
from proxy.db.unpriced import priceable_rows, set_costs, unpriced_models

__all__ = ["Repriced", "missing_prices", "reprice"]

_TOOL_COUNTS = ("code_interpreter_sessions", "file_search_calls", "web_search_calls")


@dataclass(frozen=True)
class Repriced:
    """What a reprice changed (or, dry, would change): `rows` that got a new cost, the money
    those changes add (`cost_usd`, new minus old, an unpriced row's old cost counting 0), and
    `still_unpriced`, the selected rows that still have no price."""

    rows: int
    cost_usd: Decimal
    still_unpriced: int


def _usage(row: dict[str, Any]) -> Usage:
    return Usage(
        prompt_tokens=row["prompt_tokens"],
        cached_tokens=row["cached_tokens"],
        completion_tokens=row["completion_tokens"],
        code_interpreter_sessions=row["code_interpreter_sessions"],
        file_search_calls=row["file_search_calls"],
        web_search_calls=row["web_search_calls"],
        web_search_preview_calls=row["web_search_preview_calls"],
    )


def _container_cost(table: PriceTable, row: dict[str, Any]) -> Decimal | None:
    """A container session's row (kind "container"): its model names the session's price,
    its estimate_basis the minutes billed ("12 min"; none: one full session)."""
    memory = (row["model"] or "").rpartition("_")[2]
    memory = memory if memory in ("4g", "16g", "64g") else "1g"
    basis = (row["estimate_basis"] or "").split()
    minutes = int(basis[0]) if basis and basis[0].isdigit() else None
    return session_cost(table, memory, row["occurred_at"], minutes)


def _cost(table: PriceTable, row: dict[str, Any]) -> Decimal | None:
    if row["kind"] == "container":
        return _container_cost(table, row)
    return cost_of(table, row["model"], row["occurred_at"], _usage(row)).billed


async def reprice(
    sm: async_sessionmaker[AsyncSession],
    table: PriceTable,
    since: dt.datetime | None,
    until: dt.datetime | None = None,
    *,
    model: str | None = None,
    every_row: bool = False,
    dry_run: bool = False,
) -> Repriced:
    """Price the unpriced rows in [since, until) (of `model`, if given) with `table`; with
    `every_row`, every row there, so that a corrected price applies to the past. Writes the new
    costs and one audit_log row ("reprice") unless `dry_run` or nothing changed."""
    async with sm.begin() as session:
        rows = await priceable_rows(session, since, until, model=model, only_unpriced=not every_row)
        changes: list[tuple[int, Decimal]] = []
        moved = Decimal(0)
        still = 0
        for row in rows:
            new = _cost(table, row)
            if new is None:
                still += 1
                continue
            if new != row["cost_usd"]:
                changes.append((row["id"], new))
                moved += new - (row["cost_usd"] or 0)
        result = Repriced(len(changes), moved, still)
        if dry_run or not changes:
            await session.rollback()
            return result
        await set_costs(session, changes)
        detail = {
            "since": since,
            "until": until,
            "model": model,
            "every_row": every_row,
            "still_unpriced": still,
        }
        await add_entry(session, "reprice", detail, len(changes), moved)
    return result


async def missing_prices(
    sm: async_sessionmaker[AsyncSession],
    table: PriceTable,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """Per model with unpriced rows: their counts (proxy.db.unpriced.unpriced_models) and
    `missing`, what `table` still lacks at the last time one occurred ("model" and tool
    names, space-separated), or "" when it has every price now and a reprice would apply
    them."""
    out = []
    for row in await unpriced_models(sm, since, until):
        at = row["last_seen"]
        missing = []
        used_tokens = row["prompt_tokens"] or row["completion_tokens"]
        if used_tokens and table.model_price(row["model"], at) is None:
            missing.append("model")
        for tool, count in zip(TOOLS[:3], _TOOL_COUNTS, strict=True):
            if row[count] and table.tool_price(tool, at) is None:
                missing.append(tool)
        out.append(row | {"missing": " ".join(missing)})
    return out
