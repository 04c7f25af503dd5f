from __future__ import annotations

import asyncio

from proxy.db import secrets as db_secrets
from proxy.db.engine import make_engine, make_sessionmaker


async def test_the_secret_is_created_once_and_shared(db_url: str, sm):
    engines = [make_engine(db_url) for _ in range(3)]
    try:
        secrets = await asyncio.gather(
            *(
                db_secrets.get_or_create_secret(make_sessionmaker(e))
                for e in engines
                for _ in range(3)
            )
        )
    finally:
        for engine in engines:
            await engine.dispose()
    assert len(set(secrets)) == 1
    assert len(secrets[0]) == 64 and bytes.fromhex(secrets[0].decode())
    assert await db_secrets.get_or_create_secret(sm) == secrets[0]
    assert await db_secrets.get_or_create_secret(sm, "other") != secrets[0]
    assert await db_secrets.hmac_secret(sm) == secrets[0]
    assert await db_secrets.hmac_secret(sm, "configured") == b"configured"
