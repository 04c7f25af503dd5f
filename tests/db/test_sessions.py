"""Code interpreter session arithmetic (proxy.db.sessions): pure, no database."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from proxy.db.sessions import open_sessions, shares, thread_totals

T0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)


def at(*minutes: float) -> list[dt.datetime]:
    return [T0 + dt.timedelta(minutes=m) for m in minutes]


@pytest.mark.parametrize(
    ("minutes", "expected"),
    [
        ((), (0, None)),
        ((0,), (1, 0)),
        ((0, 59.99), (1, 0)),
        ((0, 60), (2, 60)),  # a session ends an hour after its first call
        ((0, 30, 70, 125, 200), (3, 200)),
    ],
)
def test_open_sessions(minutes: tuple[float, ...], expected: tuple[int, float | None]):
    count, started = open_sessions(at(*minutes))
    assert count == expected[0]
    assert started == (None if expected[1] is None else at(expected[1])[0])


def test_shares_of_a_threads_runs_add_up_to_its_total_in_any_order():
    runs = {"a": at(0, 30), "b": at(70, 125), "c": at(200)}
    for order in itertools.permutations(runs):
        got = shares([("t", runs[r]) for r in order], {"t": []})
        assert all(n is not None and n >= 0 for n in got), order
        assert sum(n or 0 for n in got) == 3, order


def test_shares_start_from_the_recorded_calls_and_keep_threads_apart():
    runs = [("t1", at(20)), ("t2", at(20)), (None, at(0, 90)), ("t1", []), ("t1", at(65))]
    # t1 has a session open since 0: its call at 20 is inside, the one at 65 opens another.
    assert shares(runs, {"t1": at(0), "t2": []}) == [0, 1, 2, None, 1]


def test_thread_totals_cover_recorded_and_new_calls():
    runs = [("t1", at(90)), ("t2", at(5)), (None, at(0)), ("t3", [])]
    assert thread_totals(runs, {"t1": at(0, 30), "t2": []}) == {
        "t1": (2, at(90)[0]),
        "t2": (1, at(5)[0]),
    }
