"""A fake OpenAI admin API on a real socket: costs (paged by `page`), projects and api_keys
(paged by `after`), in the shapes of the API reference. It runs on a loop of its own in a
thread, so that both async tests and the command line (which runs its own loop) can use it.

It serves one bucket per costs page and one item per list page, so every pull pages; it can
answer the first costs requests with 429 (and Retry-After) or 5xx, and answers 401 to any
other key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web

from tests.waiting import free_port

__all__ = ["FakeAdmin", "cost"]

_NUM = "~num~"


def cost(
    value: str, line_item: str | None, project: str | None, key: str | None, currency="usd"
) -> dict[str, Any]:
    return {
        "object": "organization.costs.result",
        "amount": {"value": f"{_NUM}{Decimal(value)}{_NUM}", "currency": currency},
        "line_item": line_item,
        "project_id": project,
        "api_key_id": key,
    }


def _unix(day: str) -> int:
    return int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp())


@dataclass
class FakeAdmin:
    admin_key: str = field(repr=False)
    # project id -> (name, [(key id, name, redacted_value)])
    projects: dict[str, tuple[str, list[tuple[str, str, str]]]] = field(default_factory=dict)
    # day -> results
    costs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # Answers to the next costs requests before any data: (status, Retry-After or None).
    failures: list[tuple[int, str | None]] = field(default_factory=list)
    requests: list[tuple[str, list[tuple[str, str]], float]] = field(default_factory=list)

    def start(self) -> FakeAdmin:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        assert ready.wait(10), "the fake admin API did not start"
        return self

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> FakeAdmin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/v1/organization/costs", self._costs)
        app.router.add_get("/v1/organization/projects", self._projects)
        app.router.add_get("/v1/organization/projects/{pid}/api_keys", self._keys)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        ready.set()
        self._loop.run_forever()

    def _refused(self, request: web.Request) -> web.Response | None:
        self.requests.append((request.path, list(request.query.items()), time.monotonic()))
        if request.headers.get("Authorization") != f"Bearer {self.admin_key}":
            return web.json_response(
                {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}},
                status=401,
            )
        return None

    async def _costs(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        if self.failures:
            status, retry_after = self.failures.pop(0)
            return web.json_response(
                {"error": {"message": "Rate limit reached" if status == 429 else "oops"}},
                status=status,
                headers={"Retry-After": retry_after} if retry_after is not None else {},
            )
        start, end = int(request.query["start_time"]), int(request.query["end_time"])
        days = [d for d in sorted(self.costs) if start <= _unix(d) < end]
        index = int(request.query.get("page") or 0)
        data = []
        if index < len(days):
            day = days[index]
            results = self.costs[day]
            data = [
                {
                    "object": "bucket",
                    "start_time": _unix(day),
                    "end_time": _unix(day) + 86400,
                    "results": results,
                }
            ]
        more = index + 1 < len(days)
        page = {
            "object": "page",
            "data": data,
            "has_more": more,
            "next_page": str(index + 1) if more else None,
        }
        return web.json_response(page, dumps=_dumps)

    async def _projects(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        items = [
            {"object": "organization.project", "id": pid, "name": name, "status": "active"}
            for pid, (name, _) in sorted(self.projects.items())
        ]
        return _list_page(items, request.query.get("after"))

    async def _keys(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        _, keys = self.projects.get(request.match_info["pid"], ("", []))
        items = [
            {
                "object": "organization.project.api_key",
                "id": kid,
                "name": name,
                "redacted_value": redacted,
                "created_at": 1730000000,
            }
            for kid, name, redacted in keys
        ]
        return _list_page(items, request.query.get("after"))


def _list_page(items: list[dict[str, Any]], after: str | None) -> web.Response:
    ids = [i["id"] for i in items]
    start = ids.index(after) + 1 if after in ids else 0
    page = items[start : start + 1]
    return web.json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": start + 1 < len(items),
        }
    )


def _dumps(obj: Any) -> str:
    """JSON with each amount written as a number from the digits it was given (a float would
    round them, and the API writes plain numbers)."""
    return re.sub(f'"{_NUM}([-0-9.E+]+){_NUM}"', r"\1", json.dumps(obj))
