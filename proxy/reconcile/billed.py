"""Billed costs and keys from the admin API's pages, as plain rows. Pure.

A costs page is `{"object": "page", "data": [bucket...], "has_more", "next_page"}`; a bucket
has `start_time` (unix seconds, the UTC day) and `results` of `organization.costs.result`,
each with `amount: {value, currency}`, `line_item`, `project_id` and `api_key_id` (null when
the API has nothing to group by, e.g. costs not made with a key).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["BilledKey", "BilledRow", "key_rows", "parse_costs", "tail_of"]


@dataclass(frozen=True)
class BilledRow:
    day: str  # YYYY-MM-DD, UTC
    project: str
    api_key_id: str
    line_item: str
    amount: Decimal
    currency: str
    # An Azure cost export's deployment; "" for OpenAI's costs.
    deployment: str = ""

    @property
    def group(self) -> tuple[str, str, str, str]:
        return (self.day, self.project, self.api_key_id, self.line_item)


@dataclass(frozen=True)
class BilledKey:
    api_key_id: str
    project: str
    project_name: str | None
    name: str | None
    redacted_value: str | None


def _day(start_time: Any) -> str:
    return dt.datetime.fromtimestamp(int(start_time), dt.UTC).date().isoformat()


def _amount(value: Any) -> Decimal:
    try:
        return Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise ValueError(f"amount {value!r} is not a number") from None


def parse_costs(pages: Iterable[Mapping[str, Any]]) -> list[BilledRow]:
    """One row per (day, project, key, line item), summed across pages (a bucket may be split
    across two). Raises ValueError on a result without an amount."""
    sums: dict[tuple[str, str, str, str, str], Decimal] = {}
    for page in pages:
        for bucket in page.get("data") or []:
            day = _day(bucket["start_time"])
            for result in bucket.get("results") or []:
                amount = result.get("amount") or {}
                if "value" not in amount:
                    raise ValueError(f"a cost result of {day} has no amount")
                key = (
                    day,
                    result.get("project_id") or "",
                    result.get("api_key_id") or "",
                    result.get("line_item") or "",
                    str(amount.get("currency") or "usd").lower(),
                )
                sums[key] = sums.get(key, Decimal(0)) + _amount(amount["value"])
    return [
        BilledRow(d, p, k, li, value, cur) for (d, p, k, li, cur), value in sorted(sums.items())
    ]


def key_rows(
    projects: Iterable[Mapping[str, Any]], keys: Mapping[str, Iterable[Mapping[str, Any]]]
) -> list[BilledKey]:
    """The keys of every project (`keys` maps a project id to its api_keys list)."""
    out = []
    for project in projects:
        pid = project["id"]
        for key in keys.get(pid, ()):
            out.append(
                BilledKey(
                    key["id"], pid, project.get("name"), key.get("name"), key.get("redacted_value")
                )
            )
    return out


def tail_of(hint: str | None) -> str | None:
    """The visible last characters of a key, from a proxy hint (`sk-...abcd`) or an admin API
    redacted value (`sk-abc...abcd`, `sk-proj-****abcd`); None when nothing is visible."""
    if not hint:
        return None
    tail = hint.rsplit("...", 1)[-1].rsplit("*", 1)[-1]
    return tail[-4:] if len(tail) >= 4 else None
