"""Fetching a run's steps and its thread's messages from the upstream, page by page, with the
client's own credentials. I/O only; what the pages mean is decided elsewhere."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from yarl import URL

from proxy.decode import decode_body
from proxy.errors import FetchError

__all__ = ["RunFetcher", "parse_retry_after"]

_MAX_PAGES = 10_000  # a guard against an upstream whose has_more never ends


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After (or retry-after-ms style) value; None when absent or odd."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(seconds, 0.0)


class RunFetcher:
    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession],
        url_for: Callable[[str], URL],
        *,
        timeout: float = 60.0,
    ) -> None:
        self._session = session
        self._url_for = url_for
        self._timeout = timeout

    async def steps(
        self, prefix: str, query: str, thread_id: str, run_id: str, headers: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        path = f"{prefix}/threads/{quote(thread_id)}/runs/{quote(run_id)}/steps"
        return await self._all_pages(path, query, headers)

    async def messages(
        self, prefix: str, query: str, thread_id: str, headers: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        path = f"{prefix}/threads/{quote(thread_id)}/messages"
        return await self._all_pages(path, query, headers)

    async def _all_pages(
        self, path: str, query: str, headers: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        after: str | None = None
        for _ in range(_MAX_PAGES):
            params = {"limit": "100", "order": "asc"}
            if after:
                params["after"] = after
            qs = urlencode(params) + (f"&{query}" if query else "")
            page = await self._get(f"{path}?{qs}", headers)
            data = page.get("data")
            if not isinstance(data, list):
                raise FetchError(f"unexpected list body from {path}")
            items.extend(d for d in data if isinstance(d, dict))
            if not page.get("has_more") or not data:
                return items
            last = page.get("last_id") or data[-1].get("id")
            if not isinstance(last, str) or last == after:
                raise FetchError(f"paging of {path} does not advance")
            after = last
        raise FetchError(f"more than {_MAX_PAGES} pages from {path}")

    async def _get(self, path_qs: str, headers: Mapping[str, str]) -> dict[str, Any]:
        url = self._url_for(path_qs)
        try:
            async with asyncio.timeout(self._timeout):
                async with self._session().get(
                    url, headers=dict(headers), allow_redirects=False
                ) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        raise FetchError(
                            f"GET {path_qs.split('?')[0]} answered {resp.status}",
                            status=resp.status,
                            retry_after=parse_retry_after(resp.headers.get("retry-after")),
                        )
                    # auto_decompress is off on the shared session: undo any encoding here.
                    raw = decode_body(body, resp.headers.get("Content-Encoding"))
        except TimeoutError as exc:
            raise FetchError(f"GET {path_qs.split('?')[0]} timed out") from exc
        except aiohttp.ClientError as exc:
            raise FetchError(f"GET {path_qs.split('?')[0]} failed: {type(exc).__name__}") from exc
        except ValueError as exc:  # DecodeError
            raise FetchError(f"GET {path_qs.split('?')[0]}: unreadable body") from exc
        try:
            page = json.loads(raw)
        except ValueError as exc:
            raise FetchError(f"GET {path_qs.split('?')[0]}: body is not JSON") from exc
        if not isinstance(page, dict):
            raise FetchError(f"GET {path_qs.split('?')[0]}: body is not an object")
        return page
