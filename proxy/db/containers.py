"""Which response a Responses code interpreter container's session is charged to: the first
to claim it, on any replica (insert or nothing on the container id decides). The winner's
claim queues, in the same transaction, the container's collection job (source "container",
proxy.db.jobs), which prices the session once it is over."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.dialects import insert_for
from proxy.db.models import CollectionJob, ResponseContainer, utcnow

__all__ = ["claim_containers"]


async def claim_containers(
    sm: async_sessionmaker[AsyncSession],
    claims: Mapping[str, str],
    jobs: Mapping[str, Mapping[str, object]] | None = None,
) -> dict[str, str]:
    """Claim each container (id -> response id) unless another response has; returns every
    given container's owner. Idempotent: a response's own claim is still its own. For each
    container its response owns, the job of `jobs` (container id -> collection_jobs values
    without the timestamps) is inserted unless the container has one."""
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
        found = dict(owners.tuples().all())
        for container in sorted(jobs or {}):
            if found.get(container) != claims.get(container):
                continue
            values = {**(jobs or {})[container], "object_id": container}
            values.update(created_at=now, next_attempt_at=now, attempts=0)
            job = insert_for(session, CollectionJob).values(**values)
            await session.execute(
                job.on_conflict_do_nothing(index_elements=["source", "object_id"])
            )
        return found
