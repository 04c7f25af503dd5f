"""Assistant names seen in the API's assistant objects, kept for reports."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.dialects import insert_for
from proxy.db.engine import reading
from proxy.db.models import AssistantName, utcnow

__all__ = ["names_of", "remember_names"]


async def remember_names(
    sm: async_sessionmaker[AsyncSession], names: Mapping[str, str | None]
) -> None:
    """Store each assistant's latest name (None: it has none), in one transaction."""
    if not names:
        return
    now = utcnow()
    async with sm.begin() as session:
        for assistant_id, name in sorted(names.items()):  # sorted: no lock-order deadlock
            stmt = insert_for(session, AssistantName).values(
                assistant_id=assistant_id, name=name, seen_at=now
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=["assistant_id"], set_={"name": name, "seen_at": now}
            )
            await session.execute(stmt)


async def names_of(
    sm: async_sessionmaker[AsyncSession], assistant_ids: Collection[str]
) -> dict[str, str | None]:
    """The stored names of those assistants that have one row."""
    if not assistant_ids:
        return {}
    stmt = select(AssistantName.assistant_id, AssistantName.name).where(
        AssistantName.assistant_id.in_(sorted(assistant_ids))
    )
    async with reading(sm) as session:
        return dict((await session.execute(stmt)).tuples().all())
