"""Recorded cost beside billed cost, per group. Pure.

A group is any of day, project, key, line item and (Azure) deployment. Residual = billed -
recorded; it is flagged when |residual| > tolerance x billed and above one cent. The rows come
sorted by their group
(the table view re-sorts by residual), and a totals row comes last.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from proxy.reconcile.lineitems import billed_label, recorded_label
from proxy.reconcile.matching import KeyIndex

__all__ = ["COLUMNS", "GROUPS", "MONEY", "compare", "group_columns"]

# --group-by name -> output column
GROUPS: dict[str, str] = {
    "day": "day",
    "project": "project",
    "key": "key_hint",
    "line_item": "line_item",
    # Azure bills a resource's deployments, not keys: its costs meet the proxy's rows here.
    "deployment": "deployment",
}
MONEY = ("recorded_usd", "billed_usd", "residual_usd")
COLUMNS = (*MONEY, "residual_pct", "flagged")
_CENT = Decimal("0.01")


def group_columns(group_by: Sequence[str]) -> list[str]:
    columns = [GROUPS[g] for g in group_by]
    return [*columns, "ambiguous"] if "key" in group_by else columns


def _row(
    group: Mapping[str, Any], recorded: Decimal, billed: Decimal, tolerance: Decimal
) -> dict[str, Any]:
    residual = billed - recorded
    pct = None if billed == 0 else (residual / billed * 100).quantize(_CENT)
    flagged = abs(residual) > tolerance * abs(billed) and abs(residual) > _CENT
    return {
        **group,
        "recorded_usd": recorded,
        "billed_usd": billed,
        "residual_usd": residual,
        "residual_pct": pct,
        "flagged": flagged,
    }


def compare(
    recorded: Iterable[Mapping[str, Any]],
    billed: Iterable[Any],
    keys: KeyIndex,
    group_by: Sequence[str],
    tolerance: Decimal,
) -> list[dict[str, Any]]:
    """One row per group with recorded and billed cost, then a totals row (`total: true`, its
    group fields null). `recorded` rows have day, project, key_hint, kind, model and cost_usd;
    `billed` rows day, project, api_key_id, line_item, amount and currency (only USD counts)."""
    sums: dict[tuple[Any, ...], list[Any]] = {}

    def add(values: Mapping[str, Any], ambiguous: bool, side: int, amount: Decimal) -> None:
        key = tuple(values[g] for g in group_by)
        entry = sums.setdefault(key, [Decimal(0), Decimal(0), False])
        entry[side] += amount
        entry[2] = entry[2] or ambiguous

    for row in recorded:
        r = keys.recorded(row["project"], row["key_hint"])
        values = {
            "day": row["day"],
            "project": r.project,
            "key": r.key_hint,
            "line_item": recorded_label(row["kind"], row["model"]),
            "deployment": row.get("deployment") or None,
        }
        add(values, r.ambiguous, 0, row["cost_usd"])
    for row in billed:
        if row.currency != "usd":
            continue
        b = keys.billed(row.project, row.api_key_id)
        values = {
            "day": row.day,
            "project": b.project,
            "key": b.key_hint,
            "line_item": billed_label(row.line_item),
            "deployment": getattr(row, "deployment", "") or None,
        }
        add(values, b.ambiguous, 1, row.amount)
    out = []
    for key in sorted(sums, key=lambda k: tuple("" if v is None else str(v) for v in k)):
        recorded_sum, billed_sum, ambiguous = sums[key]
        group: dict[str, Any] = {GROUPS[g]: v for g, v in zip(group_by, key, strict=True)}
        if "key" in group_by:
            group["ambiguous"] = ambiguous
        out.append(_row(group, recorded_sum, billed_sum, tolerance))
    total_recorded = sum((r["recorded_usd"] for r in out), Decimal(0))
    total_billed = sum((r["billed_usd"] for r in out), Decimal(0))
    totals = _row(dict.fromkeys(group_columns(group_by)), total_recorded, total_billed, tolerance)
    out.append({**totals, "total": True})
    return out
