from __future__ import annotations

import datetime as dt

import pytest

from proxy.budgets.periods import bounds

UTC = dt.UTC


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("month", at(2026, 11, 30, 23, 59, 59), at(2026, 11, 1), at(2026, 12, 1)),
        ("month", at(2026, 12, 1), at(2026, 12, 1), at(2027, 1, 1)),
        ("month", at(2026, 12, 31, 12), at(2026, 12, 1), at(2027, 1, 1)),
        ("week", at(2026, 12, 2, 13), at(2026, 11, 30), at(2026, 12, 7)),  # a Wednesday
        ("week", at(2026, 11, 30), at(2026, 11, 30), at(2026, 12, 7)),  # a Monday
        ("week", at(2026, 12, 6, 23, 59), at(2026, 11, 30), at(2026, 12, 7)),  # a Sunday
        ("day", at(2026, 12, 2, 13, 30), at(2026, 12, 2), at(2026, 12, 3)),
    ],
)
def test_calendar_periods_in_utc(period, now, start, end):
    assert bounds(period, now) == (start, end)


def test_another_zone_is_read_as_the_utc_instant():
    tokyo = dt.timezone(dt.timedelta(hours=9))
    # Dec 1, 08:00 in Tokyo is still Nov 30 in UTC.
    assert bounds("month", dt.datetime(2026, 12, 1, 8, tzinfo=tokyo))[0] == at(2026, 11, 1)


def test_naive_and_unknown_are_refused():
    with pytest.raises(ValueError):
        bounds("month", dt.datetime(2026, 12, 1))
    with pytest.raises(ValueError):
        bounds("year", at(2026, 12, 1))
