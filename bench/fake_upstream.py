"""A fast fake OpenAI upstream for the benchmark (not the test fake: no ledger, no faults).

Endpoints, under /v1 (any key is accepted):
- POST chat/completions: a fixed small chat completion; with `"stream": true` in the body, an
  SSE stream of `?n=` chunks paced `?interval_ms=` apart, each carrying `"t"`, the
  CLOCK_MONOTONIC nanoseconds (shared by every process of the machine) taken just before the
  event was written.
- GET files/{id}/content?mib=N: N MiB (default 256) streamed from one reusable 1 MiB buffer.
- POST files: a sink that counts the uploaded bytes.
- GET threads/{t}/runs/{r}: a run that is already completed; .../steps: one code interpreter
  step and one message_creation step; GET threads/{t}/messages: a user and an assistant
  message. One page each.
Control endpoints, called directly and never through the proxy: POST /bench/runs {"n": N}
creates N runs and returns [[thread_id, run_id], ...]; GET /bench/stats counts fetches.

Run: python bench/fake_upstream.py --port PORT (uses uvloop when installed).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from typing import Any

from aiohttp import web

__all__ = ["Runs", "make_app"]

_MIB = 1 << 20
_BUFFER = b"x" * _MIB
_CHAT_HEAD = b'{"id":"chatcmpl-'
_CHAT_TAIL = json.dumps(
    {
        "object": "chat.completion",
        "created": 1764201600,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there, friend!"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    },
    separators=(",", ":"),
).encode()[1:]
_EVENT = '{{"id":"chatcmpl-sse","object":"chat.completion.chunk","created":1764201600,\
"model":"gpt-4o-mini","t":{t},"choices":[{{"index":0,"delta":{{"content":"tok"}},\
"finish_reason":null}}]}}'


def _page(items: list[dict[str, Any]]) -> web.Response:
    body = {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"],
        "last_id": items[-1]["id"],
        "has_more": False,
    }
    return web.json_response(body)


class Runs:
    """Completed runs, each in its own thread, built on request from a few fields."""

    def __init__(self) -> None:
        self.runs: dict[str, tuple[str, int]] = {}
        self.fetches = {"steps": 0, "messages": 0, "runs": 0}
        self._ids = itertools.count(1)

    def create(self, n: int) -> list[list[str]]:
        out = []
        now = int(time.time()) - 60
        for _ in range(n):
            i = next(self._ids)
            tid, rid = f"thread_b{i:07d}", f"run_b{i:07d}"
            self.runs[rid] = (tid, now)
            out.append([tid, rid])
        return out

    def run(self, rid: str) -> dict[str, Any]:
        tid, t = self.runs[rid]
        return {
            "id": rid,
            "object": "thread.run",
            "created_at": t,
            "thread_id": tid,
            "assistant_id": "asst_bench",
            "status": "completed",
            "model": "gpt-4o",
            "instructions": "You are a helpful assistant that writes and runs Python code.",
            "tools": [{"type": "code_interpreter"}],
            "metadata": {},
            "started_at": t,
            "completed_at": t + 3,
            "usage": None,
            "last_error": None,
            "required_action": None,
            "incomplete_details": None,
        }

    def steps(self, rid: str) -> list[dict[str, Any]]:
        tid, t = self.runs[rid]
        common = {"object": "thread.run.step", "run_id": rid, "thread_id": tid, "usage": None}
        call = {
            "id": f"call_{rid}",
            "type": "code_interpreter",
            "code_interpreter": {
                "input": "print(2+2)",
                "outputs": [{"type": "logs", "logs": "4"}],
            },
        }
        return [
            {
                **common,
                "id": f"step_{rid}_1",
                "created_at": t + 1,
                "completed_at": t + 2,
                "type": "tool_calls",
                "status": "completed",
                "step_details": {"type": "tool_calls", "tool_calls": [call]},
            },
            {
                **common,
                "id": f"step_{rid}_2",
                "created_at": t + 2,
                "completed_at": t + 3,
                "type": "message_creation",
                "status": "completed",
                "step_details": {
                    "type": "message_creation",
                    "message_creation": {"message_id": f"msg_{rid}_a"},
                },
            },
        ]

    def messages(self, tid: str) -> list[dict[str, Any]]:
        rid = "run_b" + tid.removeprefix("thread_b")
        t = self.runs[rid][1]

        def message(mid: str, role: str, run_id: str | None, text: str, at: int) -> dict:
            return {
                "id": mid,
                "object": "thread.message",
                "created_at": at,
                "thread_id": tid,
                "role": role,
                "run_id": run_id,
                "status": "completed",
                "content": [{"type": "text", "text": {"value": text, "annotations": []}}],
            }

        return [
            message(f"msg_{rid}_u", "user", None, "What is 2+2? Use Python.", t),
            message(f"msg_{rid}_a", "assistant", rid, 'The output was "4".', t + 2),
        ]


def make_app() -> web.Application:
    runs = Runs()
    ids = itertools.count(1)

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if b'"stream":true' not in body.replace(b" ", b""):
            payload = _CHAT_HEAD + str(next(ids)).encode() + b'",' + _CHAT_TAIL
            return web.Response(body=payload, content_type="application/json")
        n = min(int(request.query.get("n", "50")), 10_000)
        interval = float(request.query.get("interval_ms", "20")) / 1000
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(n):
            await asyncio.sleep(interval)
            event = _EVENT.format(t=time.monotonic_ns())
            await resp.write(f"data: {event}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def download(request: web.Request) -> web.StreamResponse:
        mib = min(int(request.query.get("mib", "256")), 4096)
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = mib * _MIB
        await resp.prepare(request)
        for _ in range(mib):
            await resp.write(_BUFFER)
        await resp.write_eof()
        return resp

    async def upload(request: web.Request) -> web.Response:
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        return web.json_response({"id": "file-bench", "object": "file", "bytes": size})

    async def get_run(request: web.Request) -> web.Response:
        runs.fetches["runs"] += 1
        return web.json_response(runs.run(request.match_info["run"]))

    async def steps(request: web.Request) -> web.Response:
        runs.fetches["steps"] += 1
        return _page(runs.steps(request.match_info["run"]))

    async def messages(request: web.Request) -> web.Response:
        runs.fetches["messages"] += 1
        return _page(runs.messages(request.match_info["thread"]))

    async def create_runs(request: web.Request) -> web.Response:
        n = min(int((await request.json())["n"]), 100_000)
        return web.json_response(runs.create(n))

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(runs.fetches)

    app = web.Application(client_max_size=0)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/files/{file}/content", download)
    app.router.add_post("/v1/files", upload)
    app.router.add_get("/v1/threads/{thread}/runs/{run}", get_run)
    app.router.add_get("/v1/threads/{thread}/runs/{run}/steps", steps)
    app.router.add_get("/v1/threads/{thread}/messages", messages)
    app.router.add_post("/bench/runs", create_runs)
    app.router.add_get("/bench/stats", stats)
    return app


async def _serve(port: int) -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()  # until the benchmark terminates the process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        uvloop = None
    (uvloop.run if uvloop is not None else asyncio.run)(_serve(args.port))


if __name__ == "__main__":
    main()
