"""What the hold seam costs a request that no holder wants: the two calls the Forwarder makes
per request when the run-creates holder is installed (its `before`, then its `hold`), against
the same loop without them. `python bench/holds.py` prints microseconds per request."""

from __future__ import annotations

import asyncio
import time

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.accounting.sources.assistants.creates import RunCreates
from proxy.forwarding.exchange import Exchange
from proxy.forwarding.holds import Holds

N = 300_000


async def _path(holds: Holds | None, exchange: Exchange) -> float:
    started = time.perf_counter()
    for _ in range(N):
        # As forward.py and relay.py do it.
        if holds is not None and holds.befores:
            waiting = holds.before(exchange)
            if waiting is not None:
                await waiting
        if holds is not None:
            for holder in holds.holders:
                if await holder.hold(exchange):
                    break
    return (time.perf_counter() - started) / N * 1e6


async def main() -> None:
    creates = RunCreates(lambda: None, None, None, "bench")  # type: ignore[arg-type]
    holds = Holds([creates], 1.0)
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
    chat = Exchange("x", "POST", "/v1/chat/completions", "", headers)
    chat.status, chat.response_headers = 200, headers
    for _ in range(3):
        without = await _path(None, chat)
        with_holder = await _path(holds, chat)
        print(f"no holder {without:.2f} us, run-creates holder {with_holder:.2f} us per request")


if __name__ == "__main__":
    asyncio.run(main())
