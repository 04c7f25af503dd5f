"""ReconcileQuery: what a reconciliation asks for, parsed the same way for the CLI and for
HTTP. Pure. Days are UTC; `since` inclusive, `until` exclusive; a month is one UTC month."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from proxy.reconcile.compare import GROUPS

__all__ = ["ReconcileError", "ReconcileQuery", "parse_groups", "parse_tolerance"]

_DEFAULT_GROUPS = ("day", "project", "key", "line_item")


class ReconcileError(ValueError):
    """A bad parameter; the message names it."""


def parse_groups(text: str) -> tuple[str, ...]:
    groups = tuple(g.strip() for g in text.split(",") if g.strip())
    for g in groups:
        if g not in GROUPS:
            raise ValueError(f"unknown field {g!r} (choose from {', '.join(GROUPS)})")
    if not groups:
        raise ValueError("no fields given")
    return groups


def parse_tolerance(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"{text!r} must be a number >= 0")
    return value


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _month(text: str) -> tuple[dt.date, dt.date]:
    try:
        start = dt.datetime.strptime(text, "%Y-%m").date()
    except ValueError:
        raise ValueError(f"{text!r} is not a month (YYYY-MM)") from None
    return start, (start + dt.timedelta(days=32)).replace(day=1)


@dataclass(frozen=True)
class ReconcileQuery:
    since: dt.date
    until: dt.date
    group_by: tuple[str, ...] = _DEFAULT_GROUPS
    tolerance: Decimal = Decimal("0.05")
    fmt: str = "table"

    @property
    def month(self) -> str | None:
        """YYYY-MM when the range is exactly one month."""
        start, end = _month(self.since.strftime("%Y-%m"))
        return self.since.strftime("%Y-%m") if (start, end) == (self.since, self.until) else None

    @classmethod
    def build(
        cls,
        *,
        month: str | None,
        since: str | None,
        until: str | None,
        group_by: str | None,
        tolerance: str | None,
        fmt: str,
        today: dt.date,
        spell: str = "--",
    ) -> ReconcileQuery:
        """Raises ReconcileError naming the bad option (spelled with `spell`: "--" or "")."""

        def parsed(name: str, value: str | None, parse: Callable[[str], Any]) -> Any:
            try:
                return None if value is None else parse(value)
            except ValueError as exc:
                raise ReconcileError(f"{spell}{name.replace('_', '-')}: {exc}") from None

        if month is not None and (since is not None or until is not None):
            raise ReconcileError(f"{spell}month cannot be combined with {spell}since/{spell}until")
        if month is not None:
            start, end = parsed("month", month, _month)
        else:
            start = parsed("since", since, _day) or today.replace(day=1)
            end = parsed("until", until, _day) or today + dt.timedelta(days=1)
        if start >= end:
            raise ReconcileError(f"{spell}since {start} must be before {spell}until {end}")
        groups = parsed("group_by", group_by, parse_groups) or _DEFAULT_GROUPS
        tol = parsed("tolerance", tolerance, parse_tolerance)
        return cls(start, end, groups, Decimal("0.05") if tol is None else tol, fmt)

    @classmethod
    def from_params(cls, params: Mapping[str, str], today: dt.date) -> ReconcileQuery:
        allowed = {"month", "since", "until", "group_by", "tolerance", "format"}
        for name in params:
            if name not in allowed:
                raise ReconcileError(f"unknown parameter {name!r}")
        fmt = params.get("format", "json")
        if fmt not in ("json", "csv"):
            raise ReconcileError(f"format: {fmt!r} is not one of json, csv")
        return cls.build(
            month=params.get("month"),
            since=params.get("since"),
            until=params.get("until"),
            group_by=params.get("group_by"),
            tolerance=params.get("tolerance"),
            fmt=fmt,
            today=today,
            spell="",
        )
