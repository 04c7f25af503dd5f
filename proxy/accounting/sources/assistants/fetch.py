"""Fetching a run (while it is in progress), its steps and its thread's messages from the
upstream, page by page, with the client's own credentials. I/O only; what the pages mean is
decided elsewhere.

Every finished run costs two of these GETs on the serving event loop, so the per-page work is
kept small: orjson, no decompressor for an identity body, a prebuilt first-page query."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from proxy.errors import FetchError
from proxy.forwarding.decode import DecodeError, decode_body, parse_json
from proxy.retry_after import parse_retry_after

__all__ = ["FetchedRun", "RunFetcher"]

_MAX_PAGES = 10_000  # a guard against an upstream whose has_more never ends
_FIRST_PAGE = "limit=100&order=asc"
_INCLUDE_RESULTS = (
    "include%5B%5D=step_details.tool_calls%5B%2A%5D.file_search.results%5B%2A%5D.content"
)


@dataclass(frozen=True, slots=True)
class FetchedRun:
    """A run's steps and its thread's messages, and the size of the bodies they came in (a
    cheap measure of how much text estimating them will tokenize)."""

    steps: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    nbytes: int


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

    async def run(
        self,
        prefix: str,
        query: str,
        thread_id: str,
        run_id: str,
        headers: Mapping[str, str],
        *,
        file_search_results: bool = False,
    ) -> FetchedRun:
        """The run's steps and its thread's messages, fetched at the same time. With
        ``file_search_results``, the steps carry the text of their file search results, which
        the model read and the API returns only when asked."""
        size = [0]
        steps_query = f"{_INCLUDE_RESULTS}&{query}" if file_search_results else query
        steps, messages = await asyncio.gather(
            self._all_pages(_steps_path(prefix, thread_id, run_id), steps_query, headers, size),
            self._all_pages(_messages_path(prefix, thread_id), query, headers, size),
        )
        return FetchedRun(steps, messages, size[0])

    async def retrieve(
        self, prefix: str, query: str, thread_id: str, run_id: str, headers: Mapping[str, str]
    ) -> dict[str, Any]:
        """The run itself, as it is now."""
        path = f"{prefix}/threads/{quote(thread_id)}/runs/{quote(run_id)}"
        tail = query.strip("&")
        return await self._get(f"{path}?{tail}" if tail else path, dict(headers), None)

    async def runs(
        self, prefix: str, query: str, thread_id: str, headers: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """The thread's latest runs, newest first (one page: a thread has one run at a time)."""
        path = f"{prefix}/threads/{quote(thread_id)}/runs?order=desc&limit=100"
        tail = query.strip("&")
        page = await self._get(f"{path}&{tail}" if tail else path, dict(headers), None)
        data = page.get("data")
        if not isinstance(data, list):
            raise FetchError(f"unexpected list body from {prefix}/threads/.../runs")
        return [d for d in data if isinstance(d, dict) and isinstance(d.get("id"), str)]

    async def steps(
        self, prefix: str, query: str, thread_id: str, run_id: str, headers: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        return await self._all_pages(_steps_path(prefix, thread_id, run_id), query, headers)

    async def messages(
        self, prefix: str, query: str, thread_id: str, headers: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        return await self._all_pages(_messages_path(prefix, thread_id), query, headers)

    async def _all_pages(
        self, path: str, query: str, headers: Mapping[str, str], size: list[int] | None = None
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        after: str | None = None
        # Once per run, not per request: aiohttp wants a dict it may copy.
        headers = dict(headers)
        tail = f"&{query.strip('&')}" if query.strip("&") else ""
        for _ in range(_MAX_PAGES):
            qs = _FIRST_PAGE if after is None else f"{_FIRST_PAGE}&after={quote(after, safe='')}"
            page = await self._get(f"{path}?{qs}{tail}", headers, size)
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

    async def _get(
        self, path_qs: str, headers: dict[str, str], size: list[int] | None
    ) -> dict[str, Any]:
        url = self._url_for(path_qs)
        try:
            async with asyncio.timeout(self._timeout):
                async with self._session().get(url, headers=headers, allow_redirects=False) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        raise FetchError(
                            f"GET {path_qs.split('?')[0]} answered {resp.status}",
                            status=resp.status,
                            retry_after=parse_retry_after(resp.headers.get("retry-after")),
                        )
                    # auto_decompress is off on the shared session: undo any encoding here.
                    encoding = resp.headers.get("Content-Encoding")
                    raw = decode_body(body, encoding) if encoding else body
        except TimeoutError as exc:
            raise FetchError(f"GET {path_qs.split('?')[0]} timed out") from exc
        except aiohttp.ClientError as exc:
            raise FetchError(f"GET {path_qs.split('?')[0]} failed: {type(exc).__name__}") from exc
        except ValueError as exc:  # DecodeError
            raise FetchError(f"GET {path_qs.split('?')[0]}: unreadable body") from exc
        try:
            page = parse_json(raw)
        except DecodeError as exc:
            raise FetchError(f"GET {path_qs.split('?')[0]}: body is not JSON") from exc
        if not isinstance(page, dict):
            raise FetchError(f"GET {path_qs.split('?')[0]}: body is not an object")
        if size is not None:
            size[0] += len(raw)
        return page


def _steps_path(prefix: str, thread_id: str, run_id: str) -> str:
    return f"{prefix}/threads/{quote(thread_id)}/runs/{quote(run_id)}/steps"


def _messages_path(prefix: str, thread_id: str) -> str:
    return f"{prefix}/threads/{quote(thread_id)}/messages"
