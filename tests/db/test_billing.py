"""proxy.db.billing on both backends: the pull lease, and billed rows replaced by day."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from proxy.db.billing import billed_rows, replace_billed, take_lease
from proxy.reconcile.billed import BilledRow
from tests.waiting import wait_until


async def test_exactly_one_holder_then_takeover(sm) -> None:
    got = await asyncio.gather(*(take_lease(sm, "pull", f"r{i}", 0.3) for i in range(4)))
    assert sorted(got) == [False, False, False, True]
    winner = f"r{got.index(True)}"
    other = "r0" if winner != "r0" else "r1"
    assert await take_lease(sm, "pull", winner, 0.3), "the holder renews"
    assert not await take_lease(sm, "pull", other, 0.3)
    await wait_until(lambda: take_lease(sm, "pull", other, 0.3), timeout=5, what="takeover")
    assert not await take_lease(sm, "pull", winner, 0.3)


def row(day: str, amount: str, key: str = "k") -> BilledRow:
    return BilledRow(day, "p", key, "gpt-4o, input", Decimal(amount), "usd")


async def test_days_are_replaced_and_others_kept(sm) -> None:
    assert await replace_billed(sm, "openai", ["d1", "d2"], [row("d1", "1"), row("d2", "2")]) == 2
    assert await replace_billed(sm, "openai", ["d1", "d2"], [row("d1", "1"), row("d2", "2")]) == 0
    # d2 again, with one row changed and one gone; d1 is not in this pull and stays.
    assert await replace_billed(sm, "openai", ["d2"], [row("d2", "2.5", "k2")]) == 2
    got = {(r.day, r.api_key_id, r.amount) for r in await billed_rows(sm, "d0", "d9")}
    assert got == {("d1", "k", Decimal(1)), ("d2", "k2", Decimal("2.5"))}
