"""A client of OpenAI's organization admin API: costs, projects and their API keys.

The admin key is held by the AdminApi object only: it goes into the Authorization header and
nowhere else (no log line, no error message, no exception carries it). Pages are followed
(`has_more`/`next_page` for costs, `has_more`/`after` for lists); 429 and 5xx answers and
connection errors are retried with backoff, honouring Retry-After. A 401 or 403 means the key
is refused and is never retried.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import aiohttp
from yarl import URL

from proxy.forwarding.upstream.egress import Egress
from proxy.retry_after import parse_retry_after

__all__ = ["ENV", "AdminApi", "AdminApiError", "AdminKeyRefused"]

ENV = "OPENAI_ADMIN_KEY"
_COST_GROUPS = ("project_id", "line_item", "api_key_id")
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class AdminApiError(Exception):
    """The admin API could not be read (after retries, or with an answer we cannot use)."""


class AdminKeyRefused(AdminApiError):
    """401 or 403: the admin key is wrong or lacks read access to usage."""


class AdminApi:
    """GETs against `{base_url}/v1/organization/...` with the admin key."""

    def __init__(
        self,
        base_url: str,
        admin_key: str,
        *,
        attempts: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        timeout: float = 60.0,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        egress: Egress | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {admin_key}"}
        self._attempts = attempts
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._egress = egress or Egress()

    def __repr__(self) -> str:  # never the key
        return f"AdminApi({self._base!r})"

    async def __aenter__(self) -> AdminApi:
        # Through the egress proxy and with the CA roots the upstream's traffic uses.
        options = self._egress.session_options(URL(self._base))
        self._session = aiohttp.ClientSession(timeout=self._timeout, **options)  # type: ignore[arg-type]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def costs(self, start_time: int, end_time: int) -> list[dict[str, Any]]:
        """Every page of daily cost buckets in [start_time, end_time) (unix seconds), grouped
        by project, line item and API key."""
        params: list[tuple[str, str]] = [
            ("start_time", str(start_time)),
            ("end_time", str(end_time)),
            ("bucket_width", "1d"),
            *(("group_by[]", group) for group in _COST_GROUPS),
            ("limit", "180"),
        ]
        pages = []
        cursor: str | None = None
        while True:
            page = await self._get(
                "/v1/organization/costs", params + ([("page", cursor)] if cursor else [])
            )
            pages.append(page)
            cursor = page.get("next_page")
            if not page.get("has_more") or not cursor:
                return pages

    async def projects(self) -> list[dict[str, Any]]:
        """Every project of the organization, archived ones included (their keys were billed)."""
        return await self._list("/v1/organization/projects", [("include_archived", "true")])

    async def api_keys(self, project_id: str) -> list[dict[str, Any]]:
        """Every API key of one project: id, name, redacted_value."""
        return await self._list(f"/v1/organization/projects/{project_id}/api_keys", [])

    async def _list(self, path: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            page = await self._get(
                path, [*params, ("limit", "100"), *([("after", after)] if after else [])]
            )
            data = page.get("data") or []
            items.extend(data)
            after = page.get("last_id") or (data[-1].get("id") if data else None)
            if not page.get("has_more") or not after:
                return items

    async def _get(self, path: str, params: list[tuple[str, str]]) -> dict[str, Any]:
        if self._session is None:
            raise RuntimeError("AdminApi is used outside `async with`")
        url = self._base + path
        for attempt in range(1, self._attempts + 1):
            wait = min(self._max_backoff, self._backoff * 2 ** (attempt - 1))
            try:
                async with self._session.get(url, params=params, headers=self._headers) as resp:
                    body = await resp.read()
                    if resp.status in (401, 403):
                        raise AdminKeyRefused(
                            f"the admin API refused the key ({resp.status}) at {path}: set "
                            f"{ENV} to an admin key with read access to usage"
                        )
                    if resp.status in _RETRY_STATUS:
                        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                        wait = wait if retry_after is None else retry_after
                        problem = f"{resp.status}"
                    elif resp.status != 200:
                        raise AdminApiError(f"{path} answered {resp.status}")
                    else:
                        return _json(body, path)
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = type(exc).__name__
            if attempt == self._attempts:
                break
            await self._sleep(min(wait, self._max_backoff))
        raise AdminApiError(f"{path}: {problem} after {self._attempts} attempts")


def _json(body: bytes, path: str) -> dict[str, Any]:
    # Amounts are parsed as Decimal: they are money, and a float would round them.
    try:
        value = json.loads(body, parse_float=Decimal)
    except ValueError:
        raise AdminApiError(f"{path} answered something that is not JSON") from None
    if not isinstance(value, dict):
        raise AdminApiError(f"{path} answered JSON that is not an object")
    return value
