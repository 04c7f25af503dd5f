"""Code interpreter sessions, counted exactly. Pure: no I/O.

A session lasts one hour from its first call; a thread's sessions are the fewest hour-long
sessions that cover all its calls; a run's share is the thread's total with its calls minus
the total without them. Adding calls never lowers that minimum, so a share is never negative,
and the shares of a thread's runs add up to the exact total in any order of collection.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

__all__ = ["SESSION_LENGTH", "open_sessions", "shares", "thread_totals"]

SESSION_LENGTH = dt.timedelta(hours=1)

Calls = Sequence[dt.datetime]


def open_sessions(times: Calls) -> tuple[int, dt.datetime | None]:
    """The fewest hour-long sessions that cover the sorted call times (each opened by the first
    call it covers), and the start of the last one."""
    opened = 0
    started: dt.datetime | None = None
    for t in times:
        if started is None or t >= started + SESSION_LENGTH:
            started = t
            opened += 1
    return opened, started


def shares(
    runs: Sequence[tuple[str | None, Calls]], recorded: Mapping[str, Calls]
) -> list[int | None]:
    """Each run's sessions, from (thread, sorted call times): the runs of a thread are taken in
    turn after the thread's `recorded` calls (sorted; every thread with calls among `runs` must
    be a key). None for a run without calls; a run without a thread counts its calls alone."""
    seen = {thread: list(calls) for thread, calls in recorded.items()}
    out: list[int | None] = []
    for thread, times in runs:
        if not times:
            out.append(None)
        elif not thread:
            out.append(open_sessions(times)[0])
        else:
            before = seen[thread]
            after = sorted([*before, *times])
            out.append(open_sessions(after)[0] - open_sessions(before)[0])
            seen[thread] = after
    return out


def thread_totals(
    runs: Sequence[tuple[str | None, Calls]], recorded: Mapping[str, Calls]
) -> dict[str, tuple[int, dt.datetime | None]]:
    """For each thread with calls among `runs`: its sessions over its recorded calls and
    theirs, and the start of the last session."""
    calls: dict[str, list[dt.datetime]] = {}
    for thread, times in runs:
        if thread and times:
            calls.setdefault(thread, list(recorded.get(thread, ()))).extend(times)
    return {thread: open_sessions(sorted(c)) for thread, c in sorted(calls.items())}
