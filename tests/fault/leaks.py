"""Looking for secrets where they must not be: every table of the database as text, and any
other text (log lines, report output), searched for API keys whole or in part.

A key leaks if any 8-character run of its secret part (the key minus `sk-`) appears: that
covers the whole key, the key without its prefix, and any longer fragment of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import MetaData, select
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["Leak", "dump_tables", "find_leaks", "secret_part"]

WINDOW = 8


def secret_part(key: str) -> str:
    return key.removeprefix("sk-")


@dataclass(frozen=True)
class Leak:
    where: str
    secret: str  # which secret, shown as its hint only
    context: str  # the matching line, with the match masked

    def __str__(self) -> str:
        return f"{self.where}: {self.secret}: {self.context}"


def _hint(secret: str) -> str:
    return f"...{secret[-4:]}"


def find_leaks(texts: Mapping[str, str], secrets: Iterable[str]) -> list[Leak]:
    """One Leak per line of `texts` (name -> text) and secret whose secret part has a
    WINDOW-long run in that line (secrets shorter than WINDOW are searched whole). The line
    is reported with every match masked."""
    windows: dict[str, str] = {}
    for secret in secrets:
        part = secret_part(secret)
        if len(part) < WINDOW:
            windows[part] = secret
            continue
        for i in range(len(part) - WINDOW + 1):
            windows[part[i : i + WINDOW]] = secret
    if not windows:
        return []
    pattern = re.compile("|".join(re.escape(w) for w in sorted(windows, key=len, reverse=True)))
    leaks = []
    for where, body in texts.items():
        if not pattern.search(body):
            continue
        for line in body.splitlines():
            found = {windows[m.group(0)] for m in pattern.finditer(line)}
            masked = pattern.sub("<" + "*" * WINDOW + ">", line)[:300]
            leaks += [Leak(where, _hint(secret), masked) for secret in sorted(found)]
    return leaks


async def dump_tables(engine: AsyncEngine) -> dict[str, str]:
    """table name -> every row of it as text (one line per row, repr of each value), for every
    table the database has (reflected, so tables unknown to the models are walked too)."""
    out: dict[str, str] = {}
    async with engine.connect() as conn:
        meta = MetaData()
        await conn.run_sync(meta.reflect)
        for table in meta.sorted_tables:
            rows = (await conn.execute(select(table))).all()
            out[f"table {table.name}"] = "\n".join(repr(tuple(row)) for row in rows)
    return out
