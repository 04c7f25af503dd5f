"""The hold seam: an answer's last bytes kept back until observers have stored what it showed.

A Holder is asked once per forwarded request, when the upstream's answer is complete and
before its last bytes go to the client, whether to hold it. When one says yes, the Forwarder
delivers the exchange's end to observers at once (with `exchange.hold` set: they retain it for
what they queue, and release it once that is durably stored), waits until the hold is released
or `timeout` passes, then writes the last bytes. Fail open: on the timeout the answer goes out
anyway, counted in `timed_out` (a database that is down costs each held answer `timeout`).

A holder may also define `before(exchange) -> Awaitable[None] | None`, called before every
request is forwarded (the exchange has its request side, `upstream_headers`, and a POST's
`request_body` when it is small enough to be read whole before forwarding): a plain,
cheap method that returns None when it does not care, or an awaitable, which is awaited for at
most `timeout` seconds; then the request goes on and the awaitable finishes on its own (fail
open, counted in `before_timed_out`). A holder without it is not asked.

With no holder nothing of this runs: the Forwarder keeps no Holds. A holder is asked on every
request, so it must be cheap when it does not care: a synchronous check first (method, path,
status), before anything it awaits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from proxy.forwarding.exchange import Exchange, Hold

__all__ = ["Holder", "Holds"]

_log = logging.getLogger("proxy.forward")


class Holder(Protocol):
    async def hold(self, exchange: Exchange) -> bool:
        """Whether the answer's end waits until observers release the exchange; the exchange
        has its status, headers and capped body copy, and no `ended_at` yet."""
        ...


class Holds:
    """The holders, asked in order by the relay (the first yes wins; one that raises is a
    no), and the bounded waits."""

    def __init__(self, holders: Sequence[Holder], timeout: float) -> None:
        self.holders = tuple(holders)
        # Those with a `before` (a missing hook means "not interested").
        self.befores: tuple[Callable[[Exchange], Awaitable[None] | None], ...] = tuple(
            h.before  # type: ignore[attr-defined]
            for h in holders
            if callable(getattr(h, "before", None))
        )
        self.timeout = timeout
        self.held = 0  # answers held
        self.timed_out = 0  # of those, sent at the timeout, unreleased
        self.before_timed_out = 0

    def before(self, exchange: Exchange) -> Awaitable[None] | None:
        """Every holder's `before`: None when none cares (no coroutine on the hot path), else
        what to await: what they returned, at once, for at most `timeout` seconds."""
        waits = None
        for fn in self.befores:
            try:
                if (wait := fn(exchange)) is not None:
                    waits = [*(waits or ()), wait]
            except Exception:
                _log.exception("a holder's before failed")  # fail open: forwarded anyway
        return self._before(waits) if waits else None

    async def _before(self, waits: list[Awaitable[None]]) -> None:
        tasks = [asyncio.ensure_future(w) for w in waits]
        done, pending = await asyncio.wait(tasks, timeout=self.timeout)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                _log.error("a holder's before failed", exc_info=task.exception())
        for task in pending:
            # Fail open: the request goes on; the hook ends on its own.
            self.before_timed_out += 1
            task.add_done_callback(_retrieved)

    def start(self, exchange: Exchange) -> Hold:
        hold = exchange.hold = Hold()
        self.held += 1
        return hold

    async def wait(self, exchange: Exchange, hold: Hold) -> None:
        """Until the hold is released, or `timeout` seconds (fail open)."""
        try:
            async with asyncio.timeout(self.timeout):
                await hold.wait()
        except TimeoutError:
            self.timed_out += 1
            _log.debug(
                "%s: held %g s without release; answered anyway", exchange.request_id, self.timeout
            )


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.error("a holder's before failed", exc_info=task.exception())
