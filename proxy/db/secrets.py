"""The server secret shared by replicas: the HMAC secret of key fingerprints when
`key_secret` is not set."""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.dialects import insert_for
from proxy.db.models import ProxySecret, utcnow

__all__ = ["get_or_create_secret", "hmac_secret"]


async def get_or_create_secret(
    sm: async_sessionmaker[AsyncSession], name: str = "key_hmac"
) -> bytes:
    """The named secret, generated on first use. Concurrent replicas agree: each offers a new
    value with insert-or-do-nothing, and all read back the one that won. The value is 64 hex
    characters and this returns their bytes, so setting the same text as
    USAGE_PROXY_KEY_SECRET yields the same fingerprints."""
    async with sm.begin() as session:
        await session.execute(
            insert_for(session, ProxySecret)
            .values(name=name, value=secrets.token_hex(32), created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["name"])
        )
        value = await session.scalar(select(ProxySecret.value).where(ProxySecret.name == name))
    assert value is not None
    return value.encode()


async def hmac_secret(sm: async_sessionmaker[AsyncSession], configured: str = "") -> bytes:
    """The key fingerprint secret: the `key_secret` setting if set, else the database's."""
    return configured.encode() if configured else await get_or_create_secret(sm)
