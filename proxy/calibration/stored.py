"""Observations from the proxy's own usage rows: runs whose upstream reported usage, recorded
with the estimate's bases beside it."""

from __future__ import annotations

import asyncio

import orjson
from sqlalchemy import select

from proxy.accounting.estimate.basis import Basis
from proxy.calibration.observations import Observation, stored_observations
from proxy.db.engine import make_engine, make_sessionmaker, reading
from proxy.db.migrate import require_head
from proxy.db.models import UsageRecord

__all__ = ["read_stored_observations"]


def read_stored_observations(database_url: str) -> list[Observation]:
    """Every reported Assistants run row that kept its estimate's bases (rows whose bases do
    not parse are skipped: they cannot be refitted)."""
    return asyncio.run(_read(database_url))


async def _read(database_url: str) -> list[Observation]:
    # A clear error for a database that is missing or not the proxy's, and none is created.
    await require_head(database_url)
    engine = make_engine(database_url)
    try:
        sm = make_sessionmaker(engine)
        query = select(
            UsageRecord.object_id,
            UsageRecord.model,
            UsageRecord.prompt_tokens,
            UsageRecord.completion_tokens,
            UsageRecord.estimate_basis,
        ).where(
            UsageRecord.kind == "assistants.run",
            UsageRecord.usage_source == "reported",
            UsageRecord.estimate_basis.is_not(None),
        )
        async with reading(sm) as session:
            rows = (await session.execute(query)).all()
    finally:
        await engine.dispose()
    out: list[Observation] = []
    for object_id, model, prompt, completion, text in rows:
        try:
            raw = orjson.loads(text)
            bases = {k: Basis.from_json(raw[k]) for k in ("prompt", "completion")}
        except (ValueError, KeyError, TypeError):
            continue
        out += stored_observations(object_id, model, (prompt, completion), bases)
    return out
