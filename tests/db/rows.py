"""Usage rows for the database tests: a run's row at a fixed time, and reading back."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import select

from proxy.accounting.usage import UsageRow
from proxy.db.models import ThreadSession, UsageRecord

T0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)
PRICE = Decimal("0.03")


def make_row(object_id: str = "run_1", **overrides) -> UsageRow:
    fields = {
        "kind": "assistant_run",
        "object_id": object_id,
        "occurred_at": T0,
        "usage_source": "estimated",
        "thread_id": "thread_1",
        "assistant_id": "asst_1",
        "model": "gpt-4o",
        "status": "completed",
        "key_fingerprint": "fp",
        "key_hint": "sk-...abcd",
        "team": "red",
        "prompt_tokens": 100,
        "completion_tokens": 47,
        "total_tokens": 147,
        "estimated_prompt_tokens": 100,
        "estimated_completion_tokens": 47,
        "cost_usd": Decimal("0.0012345678"),
    }
    return UsageRow(**(fields | overrides))


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


async def rows(sm) -> list[UsageRecord]:
    async with sm() as session:
        return list(await session.scalars(select(UsageRecord).order_by(UsageRecord.id)))


async def thread(sm, thread_id: str = "thread_1") -> ThreadSession | None:
    async with sm() as session:
        return await session.get(ThreadSession, thread_id)


def chat(object_id: str, **overrides) -> UsageRow:
    fields = {"kind": "chat.completion", "thread_id": None, "assistant_id": None}
    return make_row(object_id, **(fields | overrides))
