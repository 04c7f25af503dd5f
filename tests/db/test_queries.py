from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from proxy.accounting.usage import UsageRow
from proxy.db import queries
from proxy.db.run_usage import record_usage

UTC = dt.UTC
PLUS2 = dt.timezone(dt.timedelta(hours=2))


def when(*args: int, tz: dt.tzinfo = UTC) -> dt.datetime:
    return dt.datetime(*args, tzinfo=tz)


EVENTS = [
    # object_id, occurred_at, team, model, kind, key, cost
    ("e1", when(2026, 10, 31, 23, 59, 59, 999999), "red", "gpt-4o", "assistant_run", "fa", "0.1"),
    ("e2", when(2026, 11, 1), "red", "gpt-4o", "assistant_run", "fa", "0.2"),
    ("e3", when(2026, 11, 1, 1, 30, tz=PLUS2), "blue", "gpt-4o-mini", "response", "fb", "0.3"),
    ("e4", when(2026, 11, 15, 12), "blue", "gpt-4o", "chat_completion", "fb", "0.0000000001"),
    ("e5", when(2026, 11, 30, 23, 59, 59), "red", "gpt-4o-mini", "embedding", "fa", "1.5"),
    ("e6", when(2026, 12, 1), "red", "gpt-4o", "response", "fa", "2"),
]


@pytest.fixture
async def seeded(sm):
    for object_id, occurred_at, team, model, kind, key, cost in EVENTS:
        row = UsageRow(
            kind=kind,
            object_id=object_id,
            occurred_at=occurred_at,
            usage_source="reported",
            team=team,
            model=model,
            key_fingerprint=key,
            key_hint=f"sk-...{key}",
            assistant_id="asst_1" if kind == "assistant_run" else None,
            prompt_tokens=1000,
            completion_tokens=10,
            total_tokens=1010,
            cost_usd=Decimal(cost),
        )
        assert await record_usage(sm, row)
    return sm


NOV = (when(2026, 11, 1), when(2026, 12, 1))


async def test_events_since_is_inclusive_and_until_exclusive(seeded):
    events = await queries.usage_events(seeded, *NOV)
    # e3 is 01:30 at +02:00, i.e. 23:30 UTC on October 31.
    assert [e["object_id"] for e in events] == ["e2", "e4", "e5"]
    assert set(events[0]) == set(queries.EVENT_COLUMNS)
    assert events[0]["occurred_at"] == when(2026, 11, 1)
    assert events[0]["cost_usd"] == Decimal("0.2")


async def test_events_without_bounds_and_with_filters(seeded):
    assert len(await queries.usage_events(seeded)) == len(EVENTS)
    red = await queries.usage_events(seeded, team="red", model="gpt-4o")
    assert [e["object_id"] for e in red] == ["e1", "e2", "e6"]
    assert await queries.usage_events(seeded, kind="nothing") == []
    assert len(await queries.usage_events(seeded, limit=2)) == 2
    with pytest.raises(ValueError, match="unknown filter"):
        await queries.usage_events(seeded, colour="red")


async def test_group_by_month_and_day_in_utc(seeded):
    months = await queries.usage_groups(seeded, ["month"])
    assert [(m["month"], m["events"], m["cost_usd"]) for m in months] == [
        ("2026-10", 2, Decimal("0.4")),
        ("2026-11", 3, Decimal("1.7000000001")),
        ("2026-12", 1, Decimal("2")),
    ]
    days = await queries.usage_groups(seeded, ["day"], *NOV)
    assert [(d["day"], d["events"]) for d in days] == [
        ("2026-11-01", 1),
        ("2026-11-15", 1),
        ("2026-11-30", 1),
    ]


async def test_group_by_several_fields(seeded):
    groups = await queries.usage_groups(seeded, ["team", "key", "model"])
    assert tuple(groups[0])[:5] == (
        "team",
        "key_fingerprint",
        "key_hint",
        "model",
        "events",
    )
    summary = [(g["team"], g["key_hint"], g["model"], g["events"]) for g in groups]
    assert summary == [
        ("blue", "sk-...fb", "gpt-4o", 1),
        ("blue", "sk-...fb", "gpt-4o-mini", 1),
        ("red", "sk-...fa", "gpt-4o", 3),
        ("red", "sk-...fa", "gpt-4o-mini", 1),
    ]
    by_assistant = await queries.usage_groups(seeded, ["assistant"])
    assert [(g["assistant_id"], g["events"]) for g in by_assistant] == [("asst_1", 2), (None, 4)]


async def test_sums_are_ints_and_exact_decimals(sm):
    # 0.1 + 0.2 in floating point is 0.30000000000000004; a cent's fraction must not drift.
    costs = ["0.1", "0.2"] * 50 + ["0.0000000001"] * 7
    for i, cost in enumerate(costs):
        row = UsageRow(
            kind="chat_completion",
            object_id=f"c{i}",
            occurred_at=when(2026, 11, 2),
            usage_source="reported",
            prompt_tokens=3_000_000_000,
            cost_usd=Decimal(cost),
        )
        assert await record_usage(sm, row)
    [total] = await queries.usage_groups(sm, [])
    assert total["cost_usd"] == Decimal("15.0000000007")
    assert isinstance(total["cost_usd"], Decimal)
    assert total["prompt_tokens"] == 3_000_000_000 * len(costs)
    assert type(total["prompt_tokens"]) is int and type(total["events"]) is int


async def test_an_empty_selection_has_zero_totals_and_no_groups(sm):
    [total] = await queries.usage_groups(sm, [])
    assert total == {
        "events": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "code_interpreter_sessions": 0,
        "cost_usd": Decimal(0),
        "unpriced_events": 0,
        "unpriced_tokens": 0,
        "priced": True,
    }
    assert await queries.usage_groups(sm, ["team"]) == []


async def test_unknown_group_field(sm):
    with pytest.raises(ValueError, match="unknown group-by field 'colour'"):
        await queries.usage_groups(sm, ["team", "colour"])


async def test_responses_group_by_conversation_and_prompt(sm):
    for object_id, conversation, prompt in [
        ("resp_1", "conv_a", "pmpt_x"),
        ("resp_2", "conv_a", "pmpt_y"),
        ("resp_3", "conv_b", "pmpt_x"),
        ("resp_4", None, None),
    ]:
        row = UsageRow(
            kind="response",
            object_id=object_id,
            occurred_at=when(2026, 11, 2),
            usage_source="reported",
            conversation_id=conversation,
            prompt_id=prompt,
            prompt_tokens=10,
            completion_tokens=1,
            total_tokens=11,
        )
        assert await record_usage(sm, row)
    by_conversation = await queries.usage_groups(sm, ["conversation"])
    assert {(g["conversation_id"], g["events"]) for g in by_conversation} == {
        ("conv_a", 2),
        ("conv_b", 1),
        (None, 1),
    }
    by_prompt = await queries.usage_groups(sm, ["prompt"])
    assert {(g["prompt_id"], g["total_tokens"]) for g in by_prompt} == {
        ("pmpt_x", 22),
        ("pmpt_y", 11),
        (None, 11),
    }
