"""Which team pays: API keys (by fingerprint) and OpenAI projects mapped to teams."""

from __future__ import annotations

from sqlalchemy import delete, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.dialects import insert_for
from proxy.db.engine import reading
from proxy.db.models import KeyTeam, MappingVersion, ProjectTeam, utcnow

__all__ = [
    "UNASSIGNED",
    "add_key_team",
    "add_project_team",
    "list_key_teams",
    "list_project_teams",
    "mapping_version",
    "remove_key_team",
    "remove_project_team",
    "team_for",
]

UNASSIGNED = "unassigned"
_VERSION = select(MappingVersion.version).where(MappingVersion.id == 1)
_BUMP = (
    update(MappingVersion).where(MappingVersion.id == 1).values(version=MappingVersion.version + 1)
)


async def mapping_version(sm: async_sessionmaker[AsyncSession]) -> int:
    """The version of the mappings: it changes whenever one is added, changed or removed."""
    async with reading(sm) as session:
        return (await session.scalar(_VERSION)) or 0


async def _changed(session: AsyncSession) -> None:
    # In the transaction of the change: a replica that sees the new version sees the mapping.
    await session.execute(_BUMP)


async def team_for(
    sm: async_sessionmaker[AsyncSession], *, fingerprint: str | None, project: str | None
) -> str:
    """The key's team, else the project's team, else "unassigned". One primary-key lookup
    per table, in one round trip."""
    candidates = []
    if fingerprint:
        candidates.append(
            select(KeyTeam.team).where(KeyTeam.key_fingerprint == fingerprint).scalar_subquery()
        )
    if project:
        candidates.append(
            select(ProjectTeam.team).where(ProjectTeam.project == project).scalar_subquery()
        )
    if not candidates:
        return UNASSIGNED
    async with reading(sm) as session:
        team = await session.scalar(select(func.coalesce(*candidates, literal(UNASSIGNED))))
    return team or UNASSIGNED


async def add_key_team(
    sm: async_sessionmaker[AsyncSession],
    fingerprint: str,
    hint: str | None,
    team: str,
    label: str | None = None,
) -> None:
    """Map a key (by fingerprint) to a team; replaces an existing mapping of that key."""
    async with sm.begin() as session:
        stmt = insert_for(session, KeyTeam).values(
            key_fingerprint=fingerprint, key_hint=hint, team=team, label=label, created_at=utcnow()
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["key_fingerprint"],
            set_={"key_hint": hint, "team": team, "label": label},
        )
        await session.execute(stmt)
        await _changed(session)


async def list_key_teams(sm: async_sessionmaker[AsyncSession]) -> list[KeyTeam]:
    async with reading(sm) as session:
        rows = await session.scalars(select(KeyTeam).order_by(KeyTeam.team, KeyTeam.created_at))
        return list(rows)


async def remove_key_team(sm: async_sessionmaker[AsyncSession], fingerprint: str) -> bool:
    """True if a mapping was removed."""
    async with sm.begin() as session:
        result = await session.execute(
            delete(KeyTeam).where(KeyTeam.key_fingerprint == fingerprint)
        )
        await _changed(session)
        return result.rowcount == 1


async def add_project_team(sm: async_sessionmaker[AsyncSession], project: str, team: str) -> None:
    """Map an OpenAI project id to a team; replaces an existing mapping of that project."""
    async with sm.begin() as session:
        stmt = insert_for(session, ProjectTeam).values(
            project=project, team=team, created_at=utcnow()
        )
        stmt = stmt.on_conflict_do_update(index_elements=["project"], set_={"team": team})
        await session.execute(stmt)
        await _changed(session)


async def list_project_teams(sm: async_sessionmaker[AsyncSession]) -> list[ProjectTeam]:
    async with reading(sm) as session:
        rows = await session.scalars(select(ProjectTeam).order_by(ProjectTeam.project))
        return list(rows)


async def remove_project_team(sm: async_sessionmaker[AsyncSession], project: str) -> bool:
    """True if a mapping was removed."""
    async with sm.begin() as session:
        result = await session.execute(delete(ProjectTeam).where(ProjectTeam.project == project))
        await _changed(session)
        return result.rowcount == 1
