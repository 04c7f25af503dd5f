"""deadlines.py: the bound on each request's wait for the upstream's headers."""

from __future__ import annotations

import asyncio

import pytest

from proxy.forwarding.deadlines import HeaderDeadlines


async def test_header_deadlines_cancel_only_what_waited_too_long() -> None:
    deadlines = HeaderDeadlines(0.2)
    deadlines.start()
    never = asyncio.get_running_loop().create_future()

    async def wait(forever: bool) -> str:
        task = asyncio.current_task()
        assert task is not None
        deadlines.add(task)
        try:
            if forever:
                await never
            else:
                await asyncio.sleep(0.01)
            return "answered"
        except asyncio.CancelledError:
            if not deadlines.expired(task):
                raise
            task.uncancel()
            return "timed out"
        finally:
            deadlines.discard(task)

    try:
        slow, quick = asyncio.create_task(wait(True)), asyncio.create_task(wait(False))
        assert await asyncio.wait_for(quick, 5) == "answered"
        assert await asyncio.wait_for(slow, 5) == "timed out"
        # A task cancelled for another reason (its client left) is not a timeout.
        other = asyncio.create_task(wait(True))
        await asyncio.sleep(0)
        other.cancel()
        with pytest.raises(asyncio.CancelledError):
            await other
        assert not deadlines._waiting and not deadlines._expired
    finally:
        await deadlines.stop()
