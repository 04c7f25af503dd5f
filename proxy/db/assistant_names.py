"""Assistant names seen in the API's assistant objects, kept for reports."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.dialects import insert_for
from proxy.db.models import AssistantName, utcnow

__all__ = ["remember_names"]


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
