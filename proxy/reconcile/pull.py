"""One billing pull: the organization's keys, then the billed costs of a range of UTC days,
stored so that pulling the same days again changes nothing and an open day is replaced."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.billing import replace_billed, upsert_keys
from proxy.reconcile.admin_api import AdminApi
from proxy.reconcile.billed import key_rows, parse_costs

__all__ = ["PullSummary", "day_range", "pull"]


@dataclass(frozen=True)
class PullSummary:
    days: int
    rows: int
    changed: int
    billed: dict[str, Decimal]  # currency -> total
    keys: int

    def line(self) -> str:
        totals = ", ".join(f"{v} {c}" for c, v in sorted(self.billed.items())) or "0 usd"
        return (
            f"pulled {self.days} days: {self.rows} billed rows ({self.changed} changed), "
            f"{totals} billed; {self.keys} keys"
        )


def day_range(since: dt.date, until: dt.date) -> list[str]:
    """The days in [since, until) as YYYY-MM-DD."""
    return [(since + dt.timedelta(days=n)).isoformat() for n in range((until - since).days)]


def _unix(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp())


async def pull(
    sm: async_sessionmaker[AsyncSession], api: AdminApi, since: dt.date, until: dt.date
) -> PullSummary:
    """Pull keys and the billed costs of days [since, until) through `api` (entered) into the
    database. Raises AdminApiError (AdminKeyRefused for a refused key); stores nothing then."""
    projects = await api.projects()
    keys = {p["id"]: await api.api_keys(p["id"]) for p in projects}
    pages = await api.costs(_unix(since), _unix(until))
    rows = parse_costs(pages)
    billed_keys = key_rows(projects, keys)
    await upsert_keys(sm, billed_keys)
    days = day_range(since, until)
    changed = await replace_billed(sm, "openai", days, rows)
    totals: dict[str, Decimal] = {}
    for row in rows:
        totals[row.currency] = totals.get(row.currency, Decimal(0)) + row.amount
    return PullSummary(len(days), len(rows), changed, totals, len(billed_keys))
