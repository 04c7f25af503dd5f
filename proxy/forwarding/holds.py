"""The hold seam: an answer's last bytes kept back until observers have stored what it showed.

A Holder is asked once per forwarded request, when the upstream's answer is complete and
before its last bytes go to the client, whether to hold it. When one says yes, the Forwarder
delivers the exchange's end to observers at once (with `exchange.hold` set: they retain it for
what they queue, and release it once that is durably stored), waits until the hold is released
or `timeout` passes, then writes the last bytes. Fail open: on the timeout the answer goes out
anyway, counted in `timed_out` (a database that is down costs each held answer `timeout`).

With no holder nothing of this runs: the Forwarder keeps no Holds. A holder is asked on every
request, so it must be cheap when it does not care: a synchronous check first (method, path,
status), before anything it awaits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
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
    """The holders, asked in order (the first yes wins), and the bounded wait."""

    def __init__(self, holders: Sequence[Holder], timeout: float) -> None:
        self.holders = tuple(holders)
        self.timeout = timeout
        self.held = 0  # answers held
        self.timed_out = 0  # of those, sent at the timeout, unreleased

    async def wanted(self, exchange: Exchange) -> bool:
        for holder in self.holders:
            try:
                if await holder.hold(exchange):
                    return True
            except Exception:
                # Fail open: a holder that cannot decide holds nothing.
                _log.exception("holder %s failed; not holding", type(holder).__name__)
        return False

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
