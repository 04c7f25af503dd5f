"""`billing keys`: the provider's keys beside the key hints the proxy recorded."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.billing import billing_keys, seen_keys
from proxy.reconcile.matching import KeyIndex, KeyMatch
from proxy.reports.render import render

__all__ = ["COLUMNS", "key_matches", "keys_report"]

COLUMNS = ("status", "project", "key_hint", "api_key_ids", "names")


async def key_matches(sm: async_sessionmaker[AsyncSession]) -> list[KeyMatch]:
    return KeyIndex(await billing_keys(sm)).matches(await seen_keys(sm))


async def keys_report(sm: async_sessionmaker[AsyncSession], fmt: str) -> str:
    rows: list[dict[str, Any]] = [
        {
            "status": m.status,
            "project": m.project,
            "key_hint": m.key_hint,
            "api_key_ids": ",".join(m.api_key_ids),
            "names": ",".join(m.names),
        }
        for m in await key_matches(sm)
    ]
    return render(rows, COLUMNS, fmt, totals=False)
