"""Moving recorded usage to another team (`usage-proxy reassign`): one UPDATE and its
audit_log row in one transaction, so a report sees the rows either all before or all after
the move, on both backends (PostgreSQL's MVCC; SQLite's WAL, whose readers never block)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, distinct, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db import rollup
from proxy.db.audit import add_entry
from proxy.db.models import CollectionJob, UsageRecord

__all__ = ["SELECTORS", "AmbiguousHint", "Moved", "reassign"]

_U = UsageRecord
# selector name -> the column it matches
SELECTORS = {
    "key_hint": _U.key_hint,
    "fingerprint": _U.key_fingerprint,
    "project": _U.project,
    "from_team": _U.team,
}
_J = CollectionJob
# The same selectors on the jobs still being collected (Assistants runs, containers): their
# rows are written later with the job's team, so a move must reach them too.
_JOB_SELECTORS = {
    "key_hint": _J.key_hint,
    "fingerprint": _J.key_fingerprint,
    "project": _J.project,
    "from_team": _J.team,
}


class AmbiguousHint(ValueError):
    """A key hint that more than one key's rows carry: the caller must name a fingerprint."""


@dataclass(frozen=True)
class Moved:
    """Rows moved (or, dry, that would move), the money they carry (priced rows), and how many
    of them have no price."""

    rows: int
    cost_usd: Decimal
    unpriced: int
    # Collection jobs (usage still to be recorded) whose team moved too, matched by when
    # they were queued: their rows have no time yet.
    jobs: int = 0


async def reassign(
    sm: async_sessionmaker[AsyncSession],
    selector: str,
    value: str,
    to_team: str,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    *,
    dry_run: bool = False,
) -> Moved:
    """Move the rows whose `selector` (a key of SELECTORS) is `value`, in [since, until), and
    not already `to_team`, to `to_team`; with one audit_log row ("reassign"). Raises
    AmbiguousHint when a key hint matches rows of more than one key."""
    where: list[ColumnElement[bool]] = [SELECTORS[selector] == value, _U.team != to_team]
    if since is not None:
        where.append(_U.occurred_at >= since)
    if until is not None:
        where.append(_U.occurred_at < until)
    async with sm.begin() as session:
        if selector == "key_hint":
            keys = await session.scalar(
                select(func.count(distinct(_U.key_fingerprint))).where(*where)
            )
            if keys and keys > 1:
                raise AmbiguousHint(
                    f"key hint {value!r} matches the rows of {keys} keys; "
                    "name one with --fingerprint (see `usage-proxy report --group-by key`)"
                )
        count, cost, unpriced = (
            await session.execute(
                select(
                    func.count(),
                    func.sum(_U.cost_usd),
                    func.count().filter(_U.cost_usd.is_(None)),
                ).where(*where)
            )
        ).one()
        # A job without a team gets the mapping's team when it is recorded: nothing to move.
        job_where = [_JOB_SELECTORS[selector] == value, _J.team.is_not(None), _J.team != to_team]
        if since is not None:
            job_where.append(_J.created_at >= since)
        if until is not None:
            job_where.append(_J.created_at < until)
        jobs = await session.scalar(select(func.count()).select_from(_J).where(*job_where))
        moved = Moved(
            int(count), cost if cost is not None else Decimal(0), int(unpriced), int(jobs or 0)
        )
        if dry_run or not (moved.rows or moved.jobs):
            await session.rollback()
            return moved
        cells = await rollup.cells_where(session, where)
        await session.execute(
            update(_J)
            .where(*job_where)
            .values(team=to_team)
            .execution_options(synchronize_session=False)
        )
        await session.execute(
            update(_U)
            .where(*where)
            .values(team=to_team)
            .execution_options(synchronize_session=False)
        )
        # Out of the old cells and into the new in one write, in key order: the cells are
        # locked in the order every batch of new rows locks them, so neither waits in a circle.
        tally = rollup.Tally()
        tally.add_cells(cells, -1)
        tally.add_cells(cells, team=to_team)
        await rollup.apply(session, tally)
        detail: dict[str, Any] = {
            selector: value,
            "to_team": to_team,
            "since": since,
            "until": until,
            "unpriced_rows": moved.unpriced,
            "waiting_jobs": moved.jobs,
        }
        await add_entry(session, "reassign", detail, moved.rows, moved.cost_usd)
    return moved
