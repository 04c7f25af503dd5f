from __future__ import annotations

from decimal import Decimal

import pytest

from proxy.reconcile.billed import BilledRow
from proxy.reconcile.compare import compare
from proxy.reconcile.matching import KeyIndex

D = Decimal


def recorded(cost: str) -> dict:
    return {"day": "2026-11-01", "project": "p", "key_hint": None, "kind": "response",
            "model": "gpt-4o", "cost_usd": D(cost)}  # fmt: skip


def billed(amount: str, currency: str = "usd") -> BilledRow:
    return BilledRow("2026-11-01", "p", "", "gpt-4o, input", D(amount), currency)


@pytest.mark.parametrize(
    ("rec", "bill", "flagged"),
    [
        ("1.00", "1.05", False),  # 5%: at the tolerance
        ("1.00", "1.06", True),
        ("0.10", "0.11", False),  # 10%, but only a cent
        ("0.10", "0.1100001", True),
        ("0.02", "0", True),  # recorded, never billed
    ],
)
def test_flagged_above_tolerance_and_a_cent(rec, bill, flagged):
    rows = compare([recorded(rec)], [billed(bill)], KeyIndex([]), ["project"], D("0.05"))
    assert rows[0]["flagged"] is flagged
    assert rows[0]["residual_usd"] == D(bill) - D(rec)


def test_other_currencies_are_not_added_to_dollars():
    rows = compare([], [billed("1"), billed("5", "eur")], KeyIndex([]), ["day"], D("0.05"))
    assert rows[0]["billed_usd"] == D("1")
    assert rows[-1]["total"] is True
