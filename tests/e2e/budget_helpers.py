"""What the budget tests share: a webhook receiver (a real aiohttp app on a real port), the
CLI run in a thread, a proxy with fast budget refreshes, and spend put into the usage table."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy import cli
from proxy.accounting.usage import UsageRow
from proxy.db import mappings
from proxy.db.usage import record_rows
from proxy.keys import fingerprint, hint
from proxy.settings import Settings
from tests.e2e.fake_upstream import FakeUpstream

SECRET = "budget-key-secret"
HOOK_SECRET = "budget-hook-secret"
REFRESH = 0.1
SM = async_sessionmaker[AsyncSession]


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Takes alert posts; answers 500 to the first `fail` of them."""

    fail: int = 0
    posts: list[Delivery] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def _take(self, request: web.Request) -> web.Response:
        status = 500 if self.fail > 0 else 200
        self.fail -= status == 500
        self.posts.append(Delivery(dict(request.headers), await request.read(), status))
        return web.Response(status=status, text="down" if status == 500 else "ok")

    @property
    def delivered(self) -> list[dict[str, Any]]:
        """The bodies of the posts answered 200, in order."""
        return [p.json for p in self.posts if p.status == 200]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._take)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def budget_settings(fake: FakeUpstream, db_url: str, **changes: Any) -> Settings:
    return Settings(
        upstream=fake.url,
        database_url=db_url,
        key_secret=SECRET,
        budget_refresh_interval=REFRESH,
        collector_poll_interval=0.05,
        collector_retry_base=0.05,
        collector_max_backoff=0.5,
        alert_webhook_secret=HOOK_SECRET,
        alert_retry_base=0.05,
        **changes,
    )


async def run_cli(*argv: str) -> tuple[int, str, str]:
    """`usage-proxy ARGV` in a thread (it runs its own event loop): code, stdout, stderr."""
    import contextlib
    import io

    def run() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(list(argv))
        return code, out.getvalue(), err.getvalue()

    return await asyncio.to_thread(run)


async def map_key(sm: SM, key: str, team: str) -> str:
    """Map `key` to `team`, as `keys add` does; its fingerprint."""
    fp = fingerprint(key, SECRET.encode())
    await mappings.add_key_team(sm, fp, hint(key), team)
    return fp


async def spend(
    sm: SM,
    team: str,
    usd: str,
    at: dt.datetime | None = None,
    project: str | None = None,
    fingerprint: str | None = None,
) -> None:
    """A usage row of `usd` for `team` at `at` (now): spend put in directly, as a true-up's
    adjustment row is."""
    row = UsageRow(
        kind="adjustment",
        object_id=f"adj_{uuid.uuid4().hex[:12]}",
        occurred_at=at or dt.datetime.now(dt.UTC),
        usage_source="adjustment",
        team=team,
        project=project,
        key_fingerprint=fingerprint,
        cost_usd=Decimal(usd),
    )
    assert await record_rows(sm, [row])
