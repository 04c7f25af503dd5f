"""An upstream for the resource-bound tests, on a real port in the test's loop.

- `GET /v1/bulk?size=N&type=octet|json|sse|tiny`: N bytes of that content type (tiny: an
  event stream of 9-byte events), written in 64 KiB
  pieces; each write waits for the transport to drain (aiohttp's StreamResponse.write), so the
  stream's `sent` stops growing when nobody downstream reads: that is the backpressure.
- `GET /v1/quiet`: an event stream that sends one event and then stays open until the client
  side goes away; `open_quiet` counts the ones open.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass

from aiohttp import web

__all__ = ["BulkStream", "BulkUpstream"]

_PIECE = 64 * 1024
_SSE_EVENT = b"data: " + b"x" * 1018 + b"\n\n"  # 1 KiB per event
_BODIES = {
    "octet": ("application/octet-stream", bytes(range(256)) * (_PIECE // 256)),
    "json": ("application/json", b"[" + b'"abcdefghijklmno",' * (_PIECE // 18 - 1) + b"0,"),
    "sse": ("text/event-stream", _SSE_EVENT * (_PIECE // len(_SSE_EVENT))),
    "tiny": ("text/event-stream", b"data: x\n\n" * (_PIECE // 9)),  # 9-byte events
}


@dataclass
class BulkStream:
    kind: str
    size: int
    sent: int = 0
    last_write: float = 0.0
    ended: bool = False  # the handler returned or was cut off
    finished: bool = False  # every byte was written

    def stalled_for(self) -> float:
        return time.monotonic() - self.last_write


class BulkUpstream:
    def __init__(self) -> None:
        self.streams: list[BulkStream] = []
        self.open_quiet = 0
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/bulk", self._bulk)
        app.router.add_get("/v1/quiet", self._quiet)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _bulk(self, request: web.Request) -> web.StreamResponse:
        kind = request.query.get("type", "octet")
        size = int(request.query["size"])
        ctype, piece = _BODIES[kind]
        stream = BulkStream(kind, size, last_write=time.monotonic())
        self.streams.append(stream)
        resp = web.StreamResponse(headers={"Content-Type": ctype, "Content-Length": str(size)})
        try:
            await resp.prepare(request)
            while stream.sent < size:
                part = piece[: size - stream.sent]
                await resp.write(part)
                stream.sent += len(part)
                stream.last_write = time.monotonic()
            stream.finished = True
        except ConnectionError:
            pass
        finally:
            stream.ended = True
        return resp

    async def _quiet(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: ready\n\n")
        self.open_quiet += 1
        try:
            await asyncio.Event().wait()  # until the client side goes away (cancellation)
        finally:
            self.open_quiet -= 1
        return resp
