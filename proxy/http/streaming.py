"""Sending a report in pieces as they are read, so that a per-event export of any size holds
one batch of rows in memory (proxy.reports.run.stream_report)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

__all__ = ["StreamCut", "send_stream"]

_log = logging.getLogger("proxy.admin")


class StreamCut(Exception):
    """The body failed after its headers were sent: the connection is dropped, so that the
    client sees a broken download rather than a short file that looks whole."""


async def send_stream(
    request: web.Request,
    pieces: AsyncIterator[str],
    content_type: str,
    disposition: str | None = None,
) -> web.StreamResponse:
    """Send the pieces as one chunked response. The first piece is read before the headers
    go out, so a database that is down still gets a clean error status (the caller's); a
    failure later can only cut the body short (logged), as with any streamed download."""
    first = await anext(pieces)
    response = web.StreamResponse()
    response.content_type = content_type
    response.charset = "utf-8"
    if disposition:
        response.headers["Content-Disposition"] = disposition
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(first.encode())
    try:
        async for piece in pieces:
            await response.write(piece.encode())
    except (SQLAlchemyError, OSError) as exc:
        _log.warning("streamed report failed part-way: %s", type(exc).__name__)
        raise StreamCut(type(exc).__name__) from exc
    await response.write_eof()
    return response
