"""Each request's wait for the upstream's response headers, bounded."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["HeaderDeadlines"]


class HeaderDeadlines:
    """Bounds each request's wait for the upstream's response headers, with one timer task for
    all requests instead of a timer per request (bench/README.md, finding 4). Deadlines are
    checked every `tick` seconds, so a timeout fires up to a tick late."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._tick = min(1.0, max(timeout / 8, 0.01))
        # Insertion order is deadline order (one timeout for all), so the scan stops early.
        self._waiting: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="upstream-header-deadlines")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def add(self, task: asyncio.Task[object]) -> None:
        self._waiting[task] = asyncio.get_running_loop().time() + self.timeout

    def discard(self, task: asyncio.Task[object]) -> None:
        self._waiting.pop(task, None)
        self._expired.discard(task)

    def expired(self, task: asyncio.Task[object]) -> bool:
        """Whether the cancellation `task` got came from its deadline."""
        return task in self._expired

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._tick)
            now = loop.time()
            due = []
            for task, deadline in self._waiting.items():
                if deadline > now:
                    break
                due.append(task)
            for task in due:
                del self._waiting[task]
                self._expired.add(task)
                task.cancel()
