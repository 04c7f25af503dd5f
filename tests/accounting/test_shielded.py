"""Shielded: a database operation that its caller's cancellation cannot cut off."""

from __future__ import annotations

import asyncio

import pytest

from proxy.accounting.shielded import Shielded


async def test_a_cancelled_caller_leaves_the_operation_running_to_its_end() -> None:
    shielded = Shielded()
    release = asyncio.Event()
    done: list[str] = []

    async def op() -> str:
        await release.wait()
        done.append("committed")
        return "ok"

    caller = asyncio.create_task(shielded(op()))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert done == []
    release.set()
    await shielded.wait(5)
    assert done == ["committed"]


async def test_a_background_operation_that_fails_is_waited_for_and_dropped() -> None:
    shielded = Shielded()

    async def fails() -> None:
        raise RuntimeError("refused")

    shielded.background(fails())
    await shielded.wait(5)
    assert await shielded(asyncio.sleep(0, "next")) == "next"
