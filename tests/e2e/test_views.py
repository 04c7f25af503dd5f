"""A reader beside a running proxy: the standard sqlite3 module, read-only, queries the views
while the proxy records traffic from the openai SDK (README, "Querying the database")."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest
from sqlalchemy.engine import make_url

from proxy.settings import Settings
from tests.e2e.conftest import client_for, wait_for

REQUESTS = 30


async def test_a_read_only_sqlite_reader_beside_the_proxy(db_url, upstream, start_proxy):
    if make_url(db_url).get_backend_name() != "sqlite":
        pytest.skip("SQLite's readers")
    path = make_url(db_url).database
    proxy = await start_proxy(Settings(upstream=upstream.url, database_url=db_url))
    counts: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as reader:
                while not stop.is_set():
                    counts.append(reader.execute("SELECT count(*) FROM usage").fetchone()[0])
                    reader.execute("SELECT * FROM usage_monthly_team").fetchall()
                    reader.execute("SELECT sum(cost_usd) FROM usage_daily").fetchone()
                    stop.wait(0.002)
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        async with client_for(proxy) as client:
            for i in range(REQUESTS):
                await client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"hi {i}"}]
                )
        await wait_for(lambda: counts and counts[-1] == REQUESTS, timeout=20)
    finally:
        stop.set()
        await asyncio.to_thread(reader.join, 5)

    assert errors == []
    # The reader never saw a row disappear, and saw every row once it was committed.
    assert counts == sorted(counts) and counts[-1] == REQUESTS
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as check:
        (events,) = check.execute("SELECT sum(events) FROM usage_monthly_team").fetchone()
    assert events == REQUESTS
