"""Mappings apply at once: a task that reads the mapping version (proxy.db.mappings, one
primary-key read) every `mapping_poll_interval` seconds and, when it moved, tells the
attributor to forget the teams it cached. `keys add` and friends bump the version in the
transaction of their change, so every replica, in any process, uses a new mapping within an
interval (plus one lookup), without reading the mapping tables per request.

Failures: a read that fails (database down) is logged once and retried at the next interval;
the cached teams stay in use meanwhile (fail open: the attributor's own fallback)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.errors import DB_ERRORS
from proxy.db.mappings import mapping_version

__all__ = ["MappingWatch"]

_log = logging.getLogger("proxy.accounting")


class MappingWatch:
    """Calls `on_change` whenever the mapping version differs from the one last read."""

    def __init__(
        self,
        sessionmaker: Callable[[], async_sessionmaker[AsyncSession]],
        on_change: Callable[[], None],
        interval: float,
    ) -> None:
        self._sm = sessionmaker
        self._on_change = on_change
        self._interval = interval
        self._version: int | None = None
        self._failing = False

    async def check(self) -> bool:
        """Read the version once; True (and `on_change` called) if it moved."""
        try:
            version = await mapping_version(self._sm())
        except DB_ERRORS as exc:
            if not self._failing:
                _log.warning("cannot read the mapping version: %s", type(exc).__name__)
            self._failing = True
            return False
        self._failing = False
        moved = self._version is not None and version != self._version
        self._version = version
        if moved:
            self._on_change()
        return moved

    async def run(self) -> None:
        """Check every interval, until cancelled."""
        while True:
            await self.check()
            await asyncio.sleep(self._interval)
