"""UTC calendar periods: a month from the 1st, a week from Monday, a day; pure."""

from __future__ import annotations

import datetime as dt

__all__ = ["ADJECTIVES", "PERIODS", "bounds"]

PERIODS = ("month", "week", "day")
ADJECTIVES = {"month": "monthly", "week": "weekly", "day": "daily"}


def bounds(period: str, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The [start, end) in UTC of the `period` that `now` (aware) falls in."""
    if now.tzinfo is None:
        raise ValueError("naive datetime given for a period")
    day = now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + dt.timedelta(days=1)
    if period == "week":
        start = day - dt.timedelta(days=day.weekday())
        return start, start + dt.timedelta(days=7)
    if period == "month":
        start = day.replace(day=1)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else (start.replace(month=start.month + 1))
        )
        return start, end
    raise ValueError(f"unknown period {period!r}")
