"""Observer: the names of assistants, from the assistant objects that pass through (the answer
to a create, retrieve or modify, or a list of them), so reports grouped by assistant show the
name beside the id. Recognised by content ("object": "assistant"), never by path.

Failures: a write that fails is logged and dropped (fail open: a name is a convenience for
reports, and the next object that passes stores it again)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from proxy.db.errors import DB_ERRORS
from proxy.forwarding.exchange import Exchange

__all__ = ["AssistantNames", "assistant_names"]

_log = logging.getLogger("proxy.accounting.assistants")
_MAX_NAME = 256


def assistant_names(body: object) -> dict[str, str | None]:
    """{assistant id: name} of an assistant object or a list of them; pure."""
    items = body.get("data") if isinstance(body, dict) and body.get("object") == "list" else [body]
    names: dict[str, str | None] = {}
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict) and item.get("object") == "assistant":
            aid, name = item.get("id"), item.get("name")
            if isinstance(aid, str) and aid:
                names[aid[:255]] = name[:_MAX_NAME] if isinstance(name, str) and name else None
    return names


class AssistantNames:
    """Stores the names of the assistant objects in 2xx JSON answers through `remember`."""

    def __init__(self, remember: Callable[[Mapping[str, str | None]], Awaitable[None]]) -> None:
        self._remember = remember

    async def on_response(self, exchange: Exchange) -> None:
        status = exchange.status
        if status is None or not 200 <= status < 300 or exchange.content_type != "application/json":
            return
        raw = exchange.raw_response_body
        compressed = bool(
            exchange.response_headers and exchange.response_headers.get("Content-Encoding")
        )
        if not compressed and raw.find(b'"assistant"') < 0:
            return  # most answers: no assistant object in them
        names = assistant_names(exchange.json())
        if not names:
            return
        try:
            await self._remember(names)
        except DB_ERRORS as exc:
            _log.warning("assistant names not stored: %s", type(exc).__name__)
