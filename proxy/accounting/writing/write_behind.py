"""Write-behind: callers hand items over and go on; one task writes them in batches.

A transaction per item on the caller's task (an observer, on the dispatcher) capped recording
at a few hundred items a second and held up everything behind it (bench/README.md, findings
1 and 2). The task here writes up to `batch` items per transaction. A batch short of `batch`
waits up to `gather` seconds for more (0: none): a transaction costs as much as dozens of
items in it. drain() and stop() cut the wait short.

Failures (fail open: the client's traffic never waits on this):
- The database is unreachable (proxy.db.errors.is_unavailable): the items stay in memory, in
  order, up to `limit` (beyond that the oldest are dropped and counted as "backlog_full"), and
  the write is retried with a doubling delay, or at once on `retry_now`. They are lost only if
  the process stops before the database is back.
- The database refused the batch: it is written again item by item, so only the item it
  refuses is dropped (counted as "database_refused"), not its neighbours.

`after_written(callback)` calls back once every item submitted so far is written (or dropped:
nothing will come of it), in order, and cuts the gather wait short meanwhile. Items are written
in the order they came, so one count of items settled is enough (what the hold seam,
proxy.forwarding.holds, waits on). During an outage the callback waits with the items.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from proxy.db.errors import DB_ERRORS, is_unavailable
from proxy.metrics import Metrics

__all__ = ["WriteBehind"]

T = TypeVar("T")


class WriteBehind(Generic[T]):
    def __init__(
        self,
        write: Callable[[list[T]], Awaitable[object]],
        metrics: Metrics,
        *,
        noun: str,
        describe: Callable[[T], str],
        log: logging.Logger,
        batch: int,
        gather: float = 0.0,
        limit: int = 100_000,
        retry_base: float = 0.5,
        max_backoff: float = 30.0,
        on_pending: Callable[[int], None] | None = None,
    ) -> None:
        self._write = write
        self._metrics = metrics
        self._noun = noun  # plural, for the logs: "usage rows"
        self._describe = describe
        self._log = log
        self._batch = batch
        self._gather = gather
        self._limit = limit
        self._retry_base = retry_base
        self._max_backoff = max_backoff
        self._on_pending = on_pending
        self._pending: collections.deque[T] = collections.deque()
        self._wake = asyncio.Event()
        self._retry = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._hurry = False
        self._stopping = False
        self._dropped = 0
        self._task: asyncio.Task[None] | None = None
        # Items ever submitted, and of those settled (written or dropped), in order.
        self._submitted = 0
        self._settled = 0
        self._waiters: collections.deque[tuple[int, Callable[[], None]]] = collections.deque()

    @property
    def pending(self) -> int:
        """Items submitted and not written yet."""
        return len(self._pending)

    def submit(self, item: T) -> None:
        """Queue an item for writing. Never blocks and never raises: the caller is an observer,
        and the client's traffic must not wait on accounting."""
        pending = self._pending
        if len(pending) >= self._limit:
            self._drop_oldest(1)
        pending.append(item)
        self._submitted += 1
        # Woken for the first item and for a full batch; items in between only gather.
        if len(pending) == 1 or len(pending) >= self._batch or not self._gather:
            self._idle.clear()
            self._wake.set()

    def after_written(self, callback: Callable[[], None]) -> None:
        """Call `callback` once every item submitted so far is written or dropped (at once when
        none is pending). It runs on the writer's task; it must not raise or block."""
        if self._settled >= self._submitted:
            callback()
            return
        self._waiters.append((self._submitted, callback))
        # Someone waits: the gather wait is cut short.
        self._idle.clear()
        self._wake.set()

    def retry_now(self) -> None:
        """The database may be back: end the current backoff wait, if any."""
        if self._pending:
            self._retry.set()

    async def drain(self, timeout: float = 10.0) -> None:
        """Write what was submitted so far, without the gather wait, and return once it is
        written (or dropped), or after `timeout` seconds."""
        self._hurry = True
        self._wake.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout)
        finally:
            self._hurry = False

    def start(self, name: str) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=name)

    async def stop(self) -> None:
        """Write everything submitted so far, then end. If the database is unreachable at
        that moment, what is left is logged as lost rather than holding up shutdown."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        self._retry.set()
        try:
            await self._task
        finally:
            self._task = None

    # --- the task ------------------------------------------------------------------------
    async def _run(self) -> None:
        delay = self._retry_base
        while True:
            if not self._pending:
                if self._stopping:
                    return
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._gather > 0 and not self._full():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._gathered(), self._gather)
            n = min(len(self._pending), self._batch)
            batch = [self._pending.popleft() for _ in range(n)]
            try:
                kept = await self._flush(batch)
            except Exception:
                # A bug, not the database: losing this batch beats losing the writer.
                self._log.exception("cannot write %d %s; they are dropped", len(batch), self._noun)
                kept = []
            self._settle(n - len(kept))
            if not kept:
                delay = self._retry_base
                self._report()
                continue
            # Back in front, so items keep their order across an outage.
            self._pending.extendleft(reversed(kept))
            if len(self._pending) > self._limit:
                self._drop_oldest(len(self._pending) - self._limit)
            self._report()
            if self._stopping:
                self._log.error(
                    "stopping while the database is unreachable: %d %s are lost",
                    len(self._pending),
                    self._noun,
                )
                self._settle(len(self._pending))
                self._pending.clear()
                self._report()
                return
            # Woken early by stop() or retry_now(), so neither waits out the backoff.
            self._retry.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._retry.wait(), delay)
            delay = min(delay * 2, self._max_backoff)

    def _full(self) -> bool:
        if self._stopping or self._hurry or self._waiters:
            return True
        return len(self._pending) >= self._batch

    def _settle(self, n: int) -> None:
        """`n` more items, the oldest pending, are written or dropped for good."""
        self._settled += n
        waiters = self._waiters
        while waiters and waiters[0][0] <= self._settled:
            waiters.popleft()[1]()

    async def _gathered(self) -> None:
        while not self._full():
            self._wake.clear()
            await self._wake.wait()

    async def _flush(self, batch: list[T]) -> list[T]:
        """Write the batch; the items to keep for a retry (the database was unreachable)."""
        try:
            await self._write(batch)
            return []
        except Exception as exc:
            # Not only DB_ERRORS: a value the driver cannot encode (sqlite3 raises
            # OverflowError for a huge int) must cost its own item, not the batch.
            if isinstance(exc, DB_ERRORS) and is_unavailable(exc):
                self._log.warning(
                    "database write failed (%s); %d %s kept in memory",
                    type(exc).__name__,
                    len(batch) + len(self._pending),
                    self._noun,
                )
                return batch
            self._log.warning(
                "the database refused a batch of %s (%s); writing them one by one",
                self._noun,
                type(exc).__name__,
            )
        for i, item in enumerate(batch):
            try:
                await self._write([item])
            except Exception as exc:
                if isinstance(exc, DB_ERRORS) and is_unavailable(exc):
                    return batch[i:]
                # Retrying an item the database refuses can never succeed; keeping it would
                # hold up every item behind it.
                self._metrics.collection_failures.labels(reason="database_refused").inc()
                self._log.error(
                    "the database refused %s, which is dropped: %s",
                    self._describe(item),
                    type(exc).__name__,
                )
        return []

    def _drop_oldest(self, n: int) -> None:
        for _ in range(n):
            self._pending.popleft()
        self._settle(n)
        self._metrics.collection_failures.labels(reason="backlog_full").inc(n)
        before, self._dropped = self._dropped, self._dropped + n
        # Once per 10,000 drops: a full backlog during an outage drops an item per request.
        if before == 0 or before // 10_000 != self._dropped // 10_000:
            self._log.error(
                "%s backlog full (%d); %d dropped so far, oldest first",
                self._noun,
                self._limit,
                self._dropped,
            )

    def _report(self) -> None:
        if self._on_pending is not None:
            self._on_pending(len(self._pending))
