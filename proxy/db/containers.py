"""Which response is charged a Responses code interpreter container's session: the first to
claim it, on any replica (insert or nothing on the container id decides)."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.dialects import insert_for
from proxy.db.models import ResponseContainer, utcnow

__all__ = ["claim_containers"]


async def claim_containers(
    sm: async_sessionmaker[AsyncSession], claims: Mapping[str, str]
) -> dict[str, str]:
    """Claim each container (id -> response id) unless another response has; returns every
    given container's owner. Idempotent: a response's own claim is still its own."""
    if not claims:
        return {}
    now = utcnow()
    async with sm.begin() as session:
        for container, response in sorted(claims.items()):  # sorted: no lock-order deadlock
            stmt = insert_for(session, ResponseContainer).values(
                container_id=container, response_id=response, claimed_at=now
            )
            await session.execute(stmt.on_conflict_do_nothing(index_elements=["container_id"]))
        owners = await session.execute(
            select(ResponseContainer.container_id, ResponseContainer.response_id).where(
                ResponseContainer.container_id.in_(sorted(claims))
            )
        )
        return dict(owners.tuples().all())
