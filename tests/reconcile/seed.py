"""Usage rows the proxy recorded in the billing scenario (tests/reconcile/scenario.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal

from proxy.db.engine import make_engine, make_sessionmaker
from proxy.db.usage import record_rows
from tests.db.rows import chat
from tests.reconcile.scenario import GPT

NOV1 = dt.datetime(2026, 11, 1, 9, 0, tzinfo=dt.UTC)
NOV2 = NOV1 + dt.timedelta(days=1)

# (object id, when, project, key hint, team, model, cost)
RECORDED = [
    ("c1", NOV1, "proj_red", "sk-...r3d1", "red", GPT, "0.06"),
    # A red row recorded without OpenAI-Project: matched to proj_red by its tail.
    ("c2", NOV1, None, "sk-...r3d1", "red", GPT, "0.0025"),
    ("c3", NOV1, "proj_blue", "sk-...b1u3", "blue", GPT, "0.40"),
    ("c4", NOV1, "proj_blue", "sk-...b1u3", "green", GPT, "0.10"),
    ("c5", NOV2, "proj_red", "sk-...r3d1", "red", GPT, "0.08"),
    # A key the admin API does not list (another organization's, say).
    ("c6", NOV2, "proj_red", "sk-...zzzz", "red", "gpt-4o-mini", "0.01"),
]


def seed_usage(url: str) -> None:
    async def go() -> None:
        engine = make_engine(url)
        try:
            rows = [
                chat(
                    oid,
                    occurred_at=when,
                    project=project,
                    key_hint=hint,
                    team=team,
                    model=model,
                    cost_usd=Decimal(cost),
                )
                for oid, when, project, hint, team, model, cost in RECORDED
            ]
            await record_rows(make_sessionmaker(engine), rows)
        finally:
            await engine.dispose()

    asyncio.run(go())
