"""Releasing held answers (proxy.forwarding.holds) once what accounting queued for them is
stored: the last observer, so every other observer has queued what the exchange showed it
(rows, jobs; during its server-sent events too) by the time it is asked. It retains the hold
for each writer and releases that part once the writer has written everything submitted so
far (WriteBehind.after_written): at once when that writer has nothing pending. A database that
is down keeps the hold until the Forwarder's timeout (fail open)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from proxy.forwarding.exchange import Exchange

__all__ = ["Settles", "StoredRelease"]


class Settles(Protocol):
    """A writer (proxy.accounting.writing.write_behind.WriteBehind)."""

    def after_written(self, callback: Callable[[], None]) -> None: ...


class StoredRelease:
    def __init__(self, writers: Sequence[Settles]) -> None:
        self._writers = tuple(writers)

    def on_response(self, exchange: Exchange) -> None:
        hold = exchange.hold
        if hold is None:
            return
        for writer in self._writers:
            writer.after_written(hold.retain())
