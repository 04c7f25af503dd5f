"""Database operations that cancellation cannot cut off half-way: a transaction cut off by
cancellation would leave its connection idle in transaction, holding row locks, outside the
pool. An owner that stops waits for the ones still running (`wait`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

__all__ = ["Shielded"]

_T = TypeVar("_T")


class Shielded:
    def __init__(self) -> None:
        self._ops: set[asyncio.Future[Any]] = set()

    async def __call__(self, op: Awaitable[_T]) -> _T:
        """Await `op`, shielded: cancelling the caller leaves it running to its end."""
        return await asyncio.shield(self._track(op))

    def background(self, op: Awaitable[object]) -> None:
        """Run `op` without waiting for it (its errors are retrieved and dropped)."""
        self._track(op)

    async def wait(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the operations still running."""
        if self._ops:
            await asyncio.wait(self._ops, timeout=timeout)

    def _track(self, op: Awaitable[_T]) -> asyncio.Future[_T]:
        future = asyncio.ensure_future(op)
        self._ops.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: asyncio.Future[Any]) -> None:
        self._ops.discard(future)
        if not future.cancelled():
            # Retrieved here too: the caller may be gone (cancelled at shutdown).
            future.exception()
