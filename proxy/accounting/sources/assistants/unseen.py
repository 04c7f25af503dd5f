"""Create-and-runs that may be unrecorded, counted and told (proxy.db.unseen_creates).

A create-and-run's intent (creates.py) left behind by a dead worker cannot be recovered: the
API cannot list threads. Once it is still unmatched `unseen_after` seconds after it was written
(Assistants runs expire 10 minutes after their creation, and a client that got its answer polls
well within that, which matches it), it is marked unseen by one replica, which logs one WARNING
line and counts it in `usage_proxy_runs_unseen_total`. /_proxy/health and `usage-proxy report`
show how many the database holds.

Dead, as intents.py decides: a worker of this host at once (proxy.accounting.process.owners);
one of another host once its intent is older than a lease as well (its live worker deletes
its own at the exchange's end).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.process.owners import is_dead, parse_owner, this_host
from proxy.accounting.sources.sweeps import sweep_forever
from proxy.db import unseen_creates
from proxy.db.models import utcnow
from proxy.db.run_intents import Intent

__all__ = ["UnseenCreates"]

_log = logging.getLogger("proxy.accounting.runs")


class UnseenCreates:
    def __init__(
        self,
        sm: Callable[[], async_sessionmaker[AsyncSession]],
        *,
        unseen_after: float,
        lease: float,
        on_unseen: Callable[[str | None], None],
    ) -> None:
        self._sm = sm
        self._after = dt.timedelta(seconds=unseen_after)
        self._lease = dt.timedelta(seconds=lease)
        self._on_unseen = on_unseen  # with the intent's team
        # A tenth of the wait, within [0.5 s, 60 s]: told within ~10% of `unseen_after`.
        self.every = min(max(unseen_after / 10, 0.5), 60.0)

    async def run(self) -> None:
        await sweep_forever(self.sweep, self.every, "look for unseen create-and-runs", _log)

    async def sweep(self, page: int = 100) -> list[Intent]:
        """Mark what is unseen now; the intents this call marked."""
        now = utcnow()
        host = this_host()
        marked: list[Intent] = []
        after = 0
        while True:
            found = await unseen_creates.pending(
                self._sm(), older_than=now - self._after, after=after, limit=page
            )
            dead = [i.id for i in found if self._dead(i, now, host)]
            for intent in await unseen_creates.mark_unseen(self._sm(), dead, now=now):
                self._tell(intent)
                marked.append(intent)
            if len(found) < page:
                return marked
            after = found[-1].id

    def _dead(self, intent: Intent, now: dt.datetime, host: str) -> bool:
        owner = parse_owner(intent.worker)
        if owner is not None and owner.host == host:
            return is_dead(intent.worker, host=host)
        return intent.created_at < now - self._lease

    def _tell(self, intent: Intent) -> None:
        # Never a key: its hint only.
        _log.warning(
            "a create-and-run may be unrecorded: sent at %s by team %s with key %s"
            " (assistant %s); its replica died before the run's answer was seen, and no"
            " replica saw the run since (docs/architecture.md, 'Runs at any moment of a crash')",
            intent.created_at.isoformat(timespec="seconds"),
            intent.team or "-",
            intent.key_hint or "-",
            intent.assistant_id or "-",
        )
        self._on_unseen(intent.team)
