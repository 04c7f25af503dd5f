"""The floor: a bare aiohttp pass-through, no observers, no database. What any aiohttp proxy
costs on this machine. Run: python bench/bare_proxy.py PORT UPSTREAM [--asyncio]"""

import asyncio
import sys

import aiohttp
from aiohttp import web

_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "te", "trailer", "upgrade"}


async def main(port: int, upstream: str) -> None:
    session = aiohttp.ClientSession(auto_decompress=False, connector=aiohttp.TCPConnector(limit=0))

    async def handle(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        body = request.content if request.body_exists else None
        url = upstream + request.raw_path
        async with session.request(request.method, url, headers=headers, data=body) as up:
            out = {k: v for k, v in up.headers.items() if k.lower() not in _HOP}
            resp = web.StreamResponse(status=up.status, reason=up.reason, headers=out)
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application(client_max_size=0)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    run = asyncio.run
    if "--asyncio" not in sys.argv:  # like the real `serve`: uvloop when installed
        import uvloop

        run = uvloop.run
    run(main(int(sys.argv[1]), sys.argv[2].rstrip("/")))
