"""The alert outbox of every source: an alert is inserted once per (source, dedup_key),
whichever replica saw it first; a sender (proxy.alerts) claims due alerts under a lease, then
marks each sent, or due again later. Claimed with FOR UPDATE SKIP LOCKED on PostgreSQL; on
SQLite the transaction holds the single write lock and the UPDATE re-checks the lease.

A source names its alerts as it likes (a string, unique within the source); the outbox never
reads the key, only compares it (budgets spell theirs in proxy.db.budgets, reconcile in
proxy.reconcile.schedule)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Integer, Table, bindparam, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.dialects import check_returning, dialect_of, insert_for
from proxy.db.engine import reading
from proxy.db.models import Alert, utcnow

__all__ = [
    "ClaimedAlert",
    "OutboxAlert",
    "ToQueue",
    "add_alerts",
    "claim",
    "drop_unsent",
    "failed",
    "queued",
    "sent",
]

_alerts: Table = Alert.__table__  # type: ignore[assignment]


class ToQueue(Protocol):
    """What `add_alerts` takes: an alert of `source`, unique by `dedup_key` within it."""

    @property
    def source(self) -> str: ...
    @property
    def dedup_key(self) -> str: ...
    @property
    def payload(self) -> str: ...  # the JSON body to post


@dataclass(frozen=True, slots=True)
class OutboxAlert:
    """An alert of any source, to queue."""

    source: str
    dedup_key: str
    payload: str


@dataclass(frozen=True, slots=True)
class ClaimedAlert:
    id: int
    payload: str
    attempts: int


def _claim(*, skip_locked: bool) -> Any:
    now = bindparam("now", type_=_alerts.c.next_attempt_at.type)
    unclaimed = or_(_alerts.c.claimed_until.is_(None), _alerts.c.claimed_until < now)
    pick = (
        select(_alerts.c.id)
        .where(_alerts.c.sent_at.is_(None), _alerts.c.next_attempt_at <= now, unclaimed)
        .order_by(_alerts.c.id)
        .limit(bindparam("limit", type_=Integer))
    )
    if skip_locked:
        pick = pick.with_for_update(skip_locked=True)
    return (
        update(_alerts)
        .where(_alerts.c.id.in_(pick), unclaimed)
        .values(claimed_by=bindparam("worker"), claimed_until=bindparam("until"))
        .returning(_alerts.c.id, _alerts.c.payload, _alerts.c.attempts)
    )


_CLAIM = {"postgresql": _claim(skip_locked=True), "sqlite": _claim(skip_locked=False)}


async def add_alerts(sm: async_sessionmaker[AsyncSession], new: Sequence[ToQueue]) -> int:
    """Insert the alerts that do not exist yet; how many this call inserted."""
    if not new:
        return 0
    now = utcnow()
    async with sm.begin() as session:
        stmt = (
            insert_for(session, Alert)
            .on_conflict_do_nothing(index_elements=["source", "dedup_key"])
            .returning(Alert.id)
        )
        check_returning(dialect_of(session))
        inserted = 0
        for alert in new:
            values = {
                "source": alert.source,
                "dedup_key": alert.dedup_key,
                "payload": alert.payload,
                "created_at": now,
                "attempts": 0,
                "next_attempt_at": now,
            }
            if (await session.execute(stmt.values(**values))).first() is not None:
                inserted += 1
        return inserted


async def queued(
    sm: async_sessionmaker[AsyncSession], source: str, dedup_keys: Collection[str]
) -> set[str]:
    """Those of the keys of `source` that have an alert, sent or not."""
    if not dedup_keys:
        return set()
    stmt = select(_alerts.c.dedup_key).where(
        _alerts.c.source == source, _alerts.c.dedup_key.in_(list(dedup_keys))
    )
    async with reading(sm) as session:
        return set((await session.execute(stmt)).scalars())


async def drop_unsent(session: AsyncSession, source: str, key_prefix: str) -> int:
    """Delete, in the caller's transaction, the unsent alerts of `source` whose key starts with
    `key_prefix` (what they were about is gone); how many."""
    result = await session.execute(
        delete(Alert).where(
            Alert.source == source,
            Alert.dedup_key.startswith(key_prefix, autoescape=True),
            Alert.sent_at.is_(None),
        )
    )
    return int(result.rowcount or 0)


async def claim(
    sm: async_sessionmaker[AsyncSession],
    *,
    worker: str,
    lease: float,
    limit: int = 10,
    now: dt.datetime | None = None,
) -> list[ClaimedAlert]:
    """Claim up to `limit` due alerts (not sent, next attempt due, no live lease) for `worker`."""
    now = now or utcnow()
    params = {
        "now": now,
        "until": now + dt.timedelta(seconds=lease),
        "worker": worker,
        "limit": limit,
    }
    async with sm.begin() as session:
        result = await session.execute(_CLAIM[dialect_of(session)], params)
        return [ClaimedAlert(i, p, a) for i, p, a in result]


async def sent(sm: async_sessionmaker[AsyncSession], alert_id: int, worker: str) -> None:
    """The alert was delivered: never sent again."""
    async with sm.begin() as session:
        await session.execute(
            update(Alert)
            .where(Alert.id == alert_id, Alert.claimed_by == worker)
            .values(sent_at=utcnow(), claimed_until=None)
        )


async def failed(
    sm: async_sessionmaker[AsyncSession],
    alert_id: int,
    worker: str,
    *,
    error: str,
    delay: float,
) -> None:
    """Delivery failed: released, and due again after `delay` seconds."""
    now = utcnow()
    async with sm.begin() as session:
        await session.execute(
            update(Alert)
            .where(Alert.id == alert_id, Alert.claimed_by == worker)
            .values(
                attempts=Alert.attempts + 1,
                next_attempt_at=now + dt.timedelta(seconds=delay),
                last_error=error[:255],
                claimed_by=None,
                claimed_until=None,
            )
        )
