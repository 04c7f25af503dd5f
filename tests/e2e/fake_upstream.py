"""A fake OpenAI-compatible upstream: a real aiohttp server on a real port.

It plays chat completions, embeddings, responses, files, error and timing cases, and the
Assistants API (threads, messages, runs that progress over polls, paged run steps) under any
path prefix, so that both `/v1/...` (OpenAI) and `/openai/...?api-version=` (Azure) work.
It keeps a ledger: completed runs, and which key fetched which run's steps and messages.

An assistant's (or run's) metadata plans the run: "outcome" (completed, failed, cancelled,
expired, incomplete), "usage" (yes/no: whether the terminal run reports usage), "code_calls" and
"file_search_calls" (how many tool call steps), "requires_action" (yes: the run first stops for
one function call, and continues once its output is submitted).

Chat and responses requests plan their answer with metadata too. Chat: "fake_status" (answer
with that error status), "fake_reply": "tool_call" (a get_weather tool call instead of text),
"fake_hang_after": N (stream N chunks, then hang until the client goes away). Responses:
"fake_outcome" (failed or incomplete), "fake_tools" (comma-separated: code_interpreter,
file_search, each adding one call item). `embedding_request_ids` makes embeddings carry an
x-request-id header. Azure's /openai/deployments/{d}/chat/completions and .../embeddings work.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import itertools
import json
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import brotli
from aiohttp import web

__all__ = ["Canned", "FakeUpstream"]

TERMINAL = ("completed", "failed", "cancelled", "expired", "incomplete")
CODE_INPUT = "print(2+2)"
ANSWER = 'The output was "4"'
SEARCH_RESULT = "The term of the contract is two years, renewing automatically."


@dataclass
class Faults:
    """Failures to inject into steps/messages fetches (which clients do not call; the collector
    does): a list of statuses, consumed in order, and a number of connections to drop.

    The probabilistic mode (tests/fault): each fetch draws from the seeded `rng` and is
    answered 429 (with `retry_after`), 500, or a dropped connection at the given rates, after
    waiting `latency` seconds. `injected` counts what was injected, by kind. `echo_key` puts
    the request's key into the injected error bodies, as a careless upstream might.
    """

    fetch_statuses: list[int] = field(default_factory=list)
    retry_after: str = "0"
    drop_connections: int = 0
    # When set, fetches wait until the event is set (a collection caught mid-fetch).
    fetch_gate: asyncio.Event | None = None
    # When set, container reads (counted first) wait until it is set.
    container_gate: asyncio.Event | None = None
    # The next this many fetches never answer: the client times out and gives up, and the
    # handler is cancelled with its connection, so it never counts as a fetch.
    hang_fetches: int = 0
    # When set, a streamed chat completion's body ends only once it is set, after `[DONE]`.
    hold_stream_end: asyncio.Event | None = None
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_drop: float = 0.0
    latency: float = 0.0
    echo_key: bool = False
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    injected: Counter[str] = field(default_factory=Counter)


class FakeUpstream:
    def __init__(self) -> None:
        self.faults = Faults()
        self.steps_page_size = 100
        self.messages_page_size = 100
        self.polls_to_complete = 2  # queued -> in_progress -> terminal on successive retrieves
        self.poll_after_ms = "5"
        self.stream_pause = 0.0  # seconds between a streamed run's in_progress and its end
        # Seconds a non-streamed run create waits, the run already created, before answering;
        # the runs whose create was answered (non-streamed, on a thread).
        self.create_pause = 0.0
        self.creates_answered: list[str] = []
        # When set, a non-streamed create-and-run waits for it, its run already created, before
        # it answers (a replica can be killed with the run made and its answer not relayed).
        self.create_and_run_gate: asyncio.Event | None = None
        # As the real API: /v1 Assistants endpoints answer 400 without OpenAI-Beta: assistants=v2.
        self.require_beta = False
        # Gzip JSON answers of the Assistants endpoints for clients that accept it, as the API does.
        self.gzip_json = False
        self.requests: list[dict[str, Any]] = []
        self.fetches: list[tuple[str, str, str]] = []  # (kind, run_id, key)
        self.completed_runs: set[str] = set()
        self.stream_closed = asyncio.Event()
        self.uploads: dict[str, bytes] = {}
        self._ids = itertools.count(1)
        self._clock = itertools.count(int(time.time()) - 3600)
        # True: created_at and friends are the wall clock's seconds, as the API's are (what a
        # run intent's recovery compares with); False: a counter an hour back, which tests move.
        self.wall_clock = False
        self.assistants: dict[str, dict[str, Any]] = {}
        self.threads: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.runs: dict[str, dict[str, Any]] = {}
        self.steps: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.polls: Counter[str] = Counter()
        self.responses: dict[str, dict[str, Any]] = {}
        # Containers API: objects by id (None: deleted, 404); an id not here is an expired
        # container that lived a minute, half an hour ago. `container_fetches`: (id, key).
        self.containers: dict[str, dict[str, Any] | None] = {}
        self.container_fetches: list[tuple[str, str]] = []
        # Azure deployment name -> the model its chat completions answer with.
        self.deployment_models: dict[str, str] = {}
        # "gzip" or "br": embeddings answers are compressed; the size of the last one sent.
        self.compress_embeddings: str | None = None
        self.last_embeddings_bytes = 0
        self.embedding_request_ids = False
        # Forwarding tests: canned responses by name, a gate that paces /gated-stream one
        # event per token, and the peers (client ports) that reached /whoami.
        self.canned: dict[str, Canned] = {}
        # When set, each chat completion waits for a token from it before it answers (tests
        # move clients in waves): `chats_waiting` wait now, `chats_passed` have got theirs.
        self.chat_gate: asyncio.Queue[None] | None = None
        self.chats_waiting = 0
        self.chats_passed = 0
        self.gate: asyncio.Queue[None] = asyncio.Queue()
        self.peers: list[int] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> str:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}"

    def _now(self) -> int:
        if self.wall_clock:
            return int(time.time())
        return next(self._clock)

    def advance_clock(self, seconds: int) -> None:
        """Move the fake's clock (created_at and friends) forward."""
        self._clock = itertools.count(next(self._clock) + seconds)

    # --- routing ---------------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "raw_path": request.raw_path,
                "query": dict(request.query),
                "headers": dict(request.headers),
                "host": request.host,
                "at": time.monotonic(),
            }
        )
        path = request.path
        for prefix in ("/v1", "/openai"):
            if path.startswith(prefix + "/"):
                rest = path[len(prefix) :]
                break
        else:
            return web.json_response({"error": {"message": "not found"}}, status=404)
        if prefix == "/openai" and "api-version" not in request.query:
            return web.json_response({"error": {"message": "api-version missing"}}, status=400)
        key = _key(request)
        if key is None:
            return web.json_response(
                {"error": {"message": "no key", "code": "invalid_api_key"}}, status=401
            )
        parts = [p for p in rest.split("/") if p]
        if (
            self.require_beta
            and prefix == "/v1"
            and parts[:1] in (["assistants"], ["threads"])
            and "assistants=v2" not in request.headers.get("OpenAI-Beta", "")
        ):
            message = "You must provide the 'OpenAI-Beta' header to access the Assistants API."
            return web.json_response(
                {"error": {"message": message, "type": "invalid_request_error"}}, status=400
            )
        handler = self._route(request.method, parts)
        if handler is None:
            return web.json_response({"error": {"message": f"no route {rest}"}}, status=404)
        fn, args = handler
        response = await fn(request, key, *args)
        if (
            self.gzip_json
            and parts[:1] == ["threads"]
            and isinstance(response, web.Response)
            and response.content_type == "application/json"
            and "gzip" in request.headers.get("Accept-Encoding", "")
        ):
            assert isinstance(response.body, bytes)
            response.body = gzip.compress(response.body, mtime=0)
            response.headers["Content-Encoding"] = "gzip"
        return response

    def _route(self, method: str, p: list[str]):
        n = len(p)
        table = [
            ("POST", ["chat", "completions"], self.chat),
            ("POST", ["deployments", "*", "chat", "completions"], self.deployment_chat),
            ("POST", ["deployments", "*", "embeddings"], self.deployment_embeddings),
            ("POST", ["embeddings"], self.embeddings),
            ("POST", ["responses"], self.create_response),
            ("GET", ["responses", "*"], self.get_response),
            ("GET", ["containers", "*"], self.get_container),
            ("POST", ["files"], self.upload),
            ("GET", ["files", "*", "content"], self.download),
            ("GET", ["models"], self.models),
            ("GET", ["echo"], self.echo),
            ("POST", ["echo"], self.echo),
            ("GET", ["ratelimited"], self.ratelimited),
            ("GET", ["silent"], self.silent),
            ("GET", ["quiet-stream"], self.quiet_stream),
            ("GET", ["big"], self.big),
            ("GET", ["canned", "*"], self.serve_canned),
            ("POST", ["canned", "*"], self.serve_canned),
            ("HEAD", ["canned", "*"], self.serve_canned),
            ("POST", ["echo-body"], self.echo_body),
            ("PUT", ["echo-body"], self.echo_body),
            ("GET", ["gated-stream"], self.gated_stream),
            ("GET", ["cut"], self.cut),
            ("GET", ["reset"], self.reset),
            ("GET", ["whoami"], self.whoami),
            ("POST", ["assistants"], self.create_assistant),
            ("POST", ["threads"], self.create_thread),
            ("POST", ["threads", "runs"], self.create_thread_and_run),
            ("POST", ["threads", "*", "messages"], self.add_message),
            ("GET", ["threads", "*", "messages"], self.list_messages),
            ("POST", ["threads", "*", "runs"], self.create_run),
            ("GET", ["threads", "*", "runs"], self.list_runs),
            ("GET", ["threads", "*", "runs", "*"], self.get_run),
            ("POST", ["threads", "*", "runs", "*"], self.get_run),
            ("POST", ["threads", "*", "runs", "*", "cancel"], self.cancel_run),
            ("POST", ["threads", "*", "runs", "*", "submit_tool_outputs"], self.submit_outputs),
            ("GET", ["threads", "*", "runs", "*", "steps"], self.list_steps),
        ]
        for m, pattern, fn in table:
            if (
                m == method
                and len(pattern) == n
                and all(a in ("*", b) for a, b in zip(pattern, p, strict=False))
            ):
                return fn, [b for a, b in zip(pattern, p, strict=False) if a == "*"]
        return None

    # --- plain endpoints -------------------------------------------------------------------
    async def chat(
        self, request: web.Request, key: str, deployment: str | None = None
    ) -> web.StreamResponse:
        body = await request.json()
        if self.chat_gate is not None:
            self.chats_waiting += 1
            try:
                await self.chat_gate.get()
            finally:
                self.chats_waiting -= 1
            self.chats_passed += 1
        if (planned := await self._planned_chat(request, body)) is not None:
            return planned
        cid = self._id("chatcmpl")
        # As Azure: a deployment answers with the model it serves.
        model = self.deployment_models.get(deployment or "") or body.get("model", "gpt-4o-mini")
        usage = {
            "prompt_tokens": 12,
            "completion_tokens": 5,
            "total_tokens": 17,
            "prompt_tokens_details": {"cached_tokens": 2},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }
        words = ["Hello", " there", ",", " friend", "!"]
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": self._now(),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "".join(words)},
                        }
                    ],
                    "usage": usage,
                }
            )
        resp = _sse_response()
        await resp.prepare(request)
        base = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": self._now(),
            "model": model,
        }
        include = (body.get("stream_options") or {}).get("include_usage")
        for i, w in enumerate(words):
            delta = {"role": "assistant", "content": w} if i == 0 else {"content": w}
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            if include:
                chunk["usage"] = None
            await resp.write(_sse(chunk))
        last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await resp.write(_sse(last))
        if include:
            await resp.write(_sse({**base, "choices": [], "usage": usage}))
        await resp.write(b"data: [DONE]\n\n")
        if self.faults.hold_stream_end is not None:
            await self.faults.hold_stream_end.wait()
        return resp

    async def embeddings(
        self, request: web.Request, key: str, deployment: str | None = None
    ) -> web.Response:
        body = await request.json()
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        answer = web.json_response(
            {
                "object": "list",
                "model": self.deployment_models.get(deployment or "")
                or body.get("model", "text-embedding-3-small"),
                "data": [
                    {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                    for i in range(len(inputs))
                ],
                "usage": {"prompt_tokens": 8 * len(inputs), "total_tokens": 8 * len(inputs)},
            },
            headers={"x-request-id": self._id("req")} if self.embedding_request_ids else None,
        )
        if self.compress_embeddings:
            # As the API does for a client that accepts it: the answer compressed on the wire.
            assert isinstance(answer.body, bytes)
            coding = self.compress_embeddings
            packed = (
                gzip.compress(answer.body) if coding == "gzip" else brotli.compress(answer.body)
            )
            answer.body = packed
            answer.headers["Content-Encoding"] = coding
            self.last_embeddings_bytes = len(packed)
        return answer

    async def create_response(self, request: web.Request, key: str) -> web.StreamResponse:
        body = await request.json()
        rid = self._id("resp")
        model = body.get("model", "gpt-4.1")
        done = {
            "id": rid,
            "object": "response",
            "created_at": self._now(),
            "model": model,
            "status": "completed",
            "output": [
                {"type": "web_search_call", "id": self._id("ws"), "status": "completed"},
                {
                    "type": "message",
                    "id": self._id("msg"),
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Hi"}],
                },
            ],
            "usage": {
                "input_tokens": 20,
                "output_tokens": 7,
                "total_tokens": 27,
                "input_tokens_details": {"cached_tokens": 4},
                "output_tokens_details": {"reasoning_tokens": 3},
            },
            "conversation": body.get("conversation"),
        }
        self._plan_response(body, done)
        if body.get("background"):
            self.responses[rid] = {**done, "status": "queued", "usage": None, "_final": done}
            return web.json_response(
                {k: v for k, v in self.responses[rid].items() if k != "_final"}
            )
        if not body.get("stream"):
            return web.json_response(done)
        resp = _sse_response()
        await resp.prepare(request)
        created = {**done, "status": "in_progress", "output": [], "usage": None}
        await resp.write(
            _sse({"type": "response.created", "response": created}, event="response.created")
        )
        await resp.write(
            _sse(
                {"type": "response.output_text.delta", "delta": "Hi"},
                event="response.output_text.delta",
            )
        )
        final = f"response.{done['status']}"
        await resp.write(_sse({"type": final, "response": done}, event=final))
        return resp

    async def get_container(self, request: web.Request, key: str, cid: str) -> web.Response:
        self.container_fetches.append((cid, key))
        if self.faults.container_gate is not None:
            await self.faults.container_gate.wait()
        if cid in self.containers and self.containers[cid] is None:
            return web.json_response({"error": {"message": "no such container"}}, status=404)
        created = int(time.time()) - 1800
        default = {
            "id": cid,
            "object": "container",
            "name": cid,
            "created_at": created,
            "last_active_at": created + 60,
            "status": "expired",
            "expires_after": {"anchor": "last_active_at", "minutes": 20},
        }
        return web.json_response(self.containers.get(cid) or default)

    async def get_response(self, request: web.Request, key: str, rid: str) -> web.Response:
        stored = self.responses.get(rid)
        if stored is None:
            return web.json_response({"error": {"message": "no such response"}}, status=404)
        self.polls[rid] += 1
        if self.polls[rid] >= 2:
            stored.update(stored["_final"])
        elif self.polls[rid] == 1:
            stored["status"] = "in_progress"
        return web.json_response({k: v for k, v in stored.items() if k != "_final"})

    async def upload(self, request: web.Request, key: str) -> web.Response:
        reader = await request.multipart()
        digest, size, name = hashlib.sha256(), 0, None
        async for part in reader:
            if part.name == "file":
                name = part.filename
                while chunk := await part.read_chunk(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
            else:
                await part.read()
        fid = self._id("file")
        self.uploads[fid] = digest.digest()
        return web.json_response(
            {
                "id": fid,
                "object": "file",
                "bytes": size,
                "filename": name,
                "purpose": "assistants",
                "created_at": self._now(),
                "status": "processed",
                "sha256": digest.hexdigest(),
            }
        )

    async def download(self, request: web.Request, key: str, fid: str) -> web.StreamResponse:
        size = int(request.query.get("size", "1048576"))
        resp = web.StreamResponse(
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        )
        await resp.prepare(request)
        block = bytes(range(256)) * 4096
        sent = 0
        while sent < size:
            piece = block[: size - sent]
            await resp.write(piece)
            sent += len(piece)
        return resp

    async def big(self, request: web.Request, key: str) -> web.StreamResponse:
        return await self.download(request, key, "big")

    async def models(self, request: web.Request, key: str) -> web.Response:
        body = json.dumps(
            {
                "object": "list",
                "data": [{"id": "gpt-4o", "object": "model", "created": 1, "owned_by": "openai"}],
            }
        ).encode()
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            return web.Response(
                body=gzip.compress(body, mtime=0),
                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            )
        return web.Response(body=body, content_type="application/json")

    async def echo(self, request: web.Request, key: str) -> web.Response:
        return web.json_response(
            {
                "method": request.method,
                "path": request.raw_path,
                "host": request.host,
                "headers": list(request.headers.items()),
            }
        )

    async def ratelimited(self, request: web.Request, key: str) -> web.Response:
        return web.Response(
            status=429,
            text='{"error":{"message":"Rate limit reached","type":"requests",'
            '"code":"rate_limit_exceeded"}}',
            headers={
                "Content-Type": "application/json",
                "retry-after": "7",
                "x-ratelimit-remaining-requests": "0",
            },
        )

    async def silent(self, request: web.Request, key: str) -> web.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def quiet_stream(self, request: web.Request, key: str) -> web.StreamResponse:
        resp = _sse_response()
        await resp.prepare(request)
        await resp.write(b"data: first\n\n")
        try:
            await asyncio.Event().wait()
        finally:
            self.stream_closed.set()
        return resp

    # --- usage of chat, responses and embeddings (see the module docstring) -----------------
    async def deployment_chat(self, request: web.Request, key: str, d: str) -> web.StreamResponse:
        return await self.chat(request, key, d)

    async def deployment_embeddings(self, request: web.Request, key: str, d: str) -> web.Response:
        return await self.embeddings(request, key, d)

    async def _planned_chat(
        self, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse | None:
        plan = body.get("metadata") or {}
        if "fake_status" in plan:
            return web.json_response(
                {"error": {"message": "planned", "type": "fake", "code": "planned"}},
                status=int(plan["fake_status"]),
            )
        tool = plan.get("fake_reply") == "tool_call"
        hang = int(plan.get("fake_hang_after", "0"))
        if not tool and not hang:
            return None
        cid, model = self._id("chatcmpl"), body.get("model", "gpt-4o-mini")
        usage = {"prompt_tokens": 60, "completion_tokens": 9, "total_tokens": 69}
        call = {"id": "call_1", "type": "function", "function": {"name": "get_weather"}}
        args = ['{"city"', ': "Paris"}']
        if not body.get("stream"):
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {**call, "function": {**call["function"], "arguments": "".join(args)}}
                ],
            }
            choice = {"index": 0, "finish_reason": "tool_calls", "message": message}
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": self._now(),
                    "model": model,
                    "choices": [choice],
                    "usage": usage,
                }
            )
        base = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": self._now(),
            "model": model,
        }
        if tool:
            first = {"index": 0, **call, "function": {**call["function"], "arguments": ""}}
            deltas = [{"role": "assistant", "content": None, "tool_calls": [first]}]
            deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": a}}]} for a in args]
        else:
            deltas = [{"role": "assistant", "content": "Once"}]
            deltas += [{"content": f" upon a time {i}"} for i in range(hang)]
        resp = _sse_response()
        await resp.prepare(request)
        try:
            for i, delta in enumerate(deltas):
                if hang and i == hang:
                    await asyncio.Event().wait()
                choice = {"index": 0, "delta": delta, "finish_reason": None}
                await resp.write(_sse({**base, "choices": [choice]}))
            end = {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
            await resp.write(_sse({**base, "choices": [end]}))
            if (body.get("stream_options") or {}).get("include_usage"):
                await resp.write(_sse({**base, "choices": [], "usage": usage}))
            await resp.write(b"data: [DONE]\n\n")
        finally:
            self.stream_closed.set()
        return resp

    def _plan_response(self, body: dict[str, Any], done: dict[str, Any]) -> None:
        plan = body.get("metadata") or {}
        if "prompt" in body:
            done["prompt"] = body["prompt"]
        tools = body.get("tools")
        if isinstance(tools, list):
            # As the API: a code_interpreter tool's auto container is echoed resolved, as its id.
            called = "code_interpreter" in plan.get("fake_tools", "")
            done["tools"] = [
                {**t, "container": "cntr_" + body.get("model", "x") if called else self._id("cntr")}
                if t.get("type") == "code_interpreter" and not isinstance(t.get("container"), str)
                else t
                for t in tools
                if isinstance(t, dict)
            ]
        for tool in filter(None, plan.get("fake_tools", "").split(",")):
            item = {"type": f"{tool}_call", "id": self._id(tool[:2]), "status": "completed"}
            if tool == "code_interpreter":
                item["container_id"] = "cntr_" + body.get("model", "x")
            done["output"].insert(0, item)
        outcome = plan.get("fake_outcome")
        if outcome == "failed":
            done.update(status="failed", usage=None, error={"code": "server_error", "message": "x"})
        elif outcome == "incomplete":
            done.update(status="incomplete", incomplete_details={"reason": "max_output_tokens"})

    # --- forwarding tests ------------------------------------------------------------------
    async def serve_canned(self, request: web.Request, key: str, name: str) -> web.StreamResponse:
        """Exactly the status, headers and body chunks a test registered in `canned`."""
        await request.read()
        canned = self.canned[name]
        resp = web.StreamResponse(status=canned.status, headers=canned.headers)
        if canned.length is not None:
            resp.content_length = canned.length
        await resp.prepare(request)
        for chunk in canned.chunks:
            await resp.write(chunk)
        return resp

    async def echo_body(self, request: web.Request, key: str) -> web.Response:
        """The request body's digest and size, read as a stream, and the headers it came with."""
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response(
            {
                "sha256": digest.hexdigest(),
                "bytes": size,
                "headers": list(request.headers.items()),
            }
        )

    async def gated_stream(self, request: web.Request, key: str) -> web.StreamResponse:
        """n events; each after the first waits for a token in `gate` (the client's ack)."""
        resp = _sse_response()
        await resp.prepare(request)
        for i in range(int(request.query.get("n", "3"))):
            if i:
                await self.gate.get()
            await resp.write(f"data: {i}\n\n".encode())
        return resp

    async def cut(self, request: web.Request, key: str) -> web.StreamResponse:
        """Promises 1000 bytes, sends 10, and drops the connection."""
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b'{"partial"')
        assert request.transport is not None
        request.transport.abort()
        return resp

    async def reset(self, request: web.Request, key: str) -> web.StreamResponse:
        """Drops the connection before any response byte."""
        assert request.transport is not None
        request.transport.abort()
        return web.Response(status=500)

    async def whoami(self, request: web.Request, key: str) -> web.Response:
        """The client's port, so tests can tell whether connections are reused."""
        assert request.transport is not None
        port = request.transport.get_extra_info("peername")[1]
        self.peers.append(port)
        return web.json_response({"port": port})

    # --- assistants ------------------------------------------------------------------------
    async def create_assistant(self, request: web.Request, key: str) -> web.Response:
        body = await request.json()
        aid = self._id("asst")
        self.assistants[aid] = {
            "id": aid,
            "object": "assistant",
            "created_at": self._now(),
            "model": body.get("model", "gpt-4o"),
            "instructions": body.get("instructions"),
            "tools": body.get("tools", []),
            "metadata": body.get("metadata") or {},
            "name": body.get("name"),
        }
        return web.json_response(self.assistants[aid])

    def _new_thread(self, body: dict[str, Any]) -> dict[str, Any]:
        tid = self._id("thread")
        self.threads[tid] = {
            "id": tid,
            "object": "thread",
            "created_at": self._now(),
            "metadata": {},
        }
        for m in body.get("messages") or []:
            self._add_message(tid, m["role"], m["content"], None)
        return self.threads[tid]

    async def create_thread(self, request: web.Request, key: str) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        return web.json_response(self._new_thread(body))

    def _add_message(
        self, tid: str, role: str, content: Any, run_id: str | None, assistant_id: str | None = None
    ) -> dict[str, Any]:
        text = content if isinstance(content, str) else content[0]["text"]
        msg = {
            "id": self._id("msg"),
            "object": "thread.message",
            "created_at": self._now(),
            "thread_id": tid,
            "role": role,
            "run_id": run_id,
            "assistant_id": assistant_id,
            "attachments": [],
            "metadata": {},
            "status": "completed",
            "content": [{"type": "text", "text": {"value": text, "annotations": []}}],
        }
        self.messages[tid].append(msg)
        return msg

    async def add_message(self, request: web.Request, key: str, tid: str) -> web.Response:
        body = await request.json()
        return web.json_response(self._add_message(tid, body["role"], body["content"], None))

    async def list_messages(self, request: web.Request, key: str, tid: str) -> web.Response:
        if fault := await self._fault(request):
            return fault
        self.fetches.append(("messages", tid, key))
        limit = min(int(request.query.get("limit", "20")), self.messages_page_size)
        return _page(self.messages[tid], request, default_order="desc", limit=limit)

    def _new_run(self, tid: str, body: dict[str, Any]) -> dict[str, Any]:
        asst = self.assistants.get(body.get("assistant_id", ""), {})
        rid = self._id("run")
        run = {
            "id": rid,
            "object": "thread.run",
            "created_at": self._now(),
            "thread_id": tid,
            "assistant_id": body.get("assistant_id"),
            "status": "queued",
            "model": body.get("model") or asst.get("model", "gpt-4o"),
            "instructions": body.get("instructions") or asst.get("instructions") or "",
            "tools": asst.get("tools", []),
            "metadata": body.get("metadata") or {},
            "started_at": None,
            "completed_at": None,
            "failed_at": None,
            "cancelled_at": None,
            "expired_at": None,
            "usage": None,
            "last_error": None,
            "required_action": None,
            "incomplete_details": None,
        }
        run["_plan"] = {**asst.get("metadata", {}), **(body.get("metadata") or {})}
        self.runs[rid] = run
        return run

    def _finish(self, run: dict[str, Any]) -> None:
        plan = run["_plan"]
        outcome = plan.get("outcome", "completed")
        tid, rid = run["thread_id"], run["id"]
        run["started_at"] = run["started_at"] or self._now()
        if outcome == "completed":
            for _ in range(int(plan.get("code_calls", "1"))):
                self.steps[rid].append(self._ci_step(run))
            for _ in range(int(plan.get("file_search_calls", "0"))):
                self.steps[rid].append(self._fs_step(run))
            msg = self._add_message(tid, "assistant", ANSWER, rid, run["assistant_id"])
            self.steps[rid].append(
                self._step(run, "message_creation", {"message_creation": {"message_id": msg["id"]}})
            )
        run["status"] = outcome
        run[
            {
                "completed": "completed_at",
                "failed": "failed_at",
                "cancelled": "cancelled_at",
                "expired": "expired_at",
                "incomplete": "completed_at",
            }[outcome]
        ] = self._now()
        if outcome == "failed":
            run["last_error"] = {"code": "server_error", "message": "boom"}
        if plan.get("usage", "yes") == "yes":
            run["usage"] = {"prompt_tokens": 300, "completion_tokens": 47, "total_tokens": 347}
        self.completed_runs.add(rid)

    def _step(self, run: dict[str, Any], type_: str, details: dict[str, Any]) -> dict[str, Any]:
        now = self._now()
        return {
            "id": self._id("step"),
            "object": "thread.run.step",
            "created_at": now,
            "run_id": run["id"],
            "assistant_id": run["assistant_id"],
            "thread_id": run["thread_id"],
            "type": type_,
            "status": "completed",
            "completed_at": now,
            "step_details": {"type": type_, **details},
            "usage": None,
        }

    def _ci_step(self, run: dict[str, Any]) -> dict[str, Any]:
        call = {
            "id": self._id("call"),
            "type": "code_interpreter",
            "code_interpreter": {"input": CODE_INPUT, "outputs": [{"type": "logs", "logs": "4"}]},
        }
        return self._step(run, "tool_calls", {"tool_calls": [call]})

    def _fs_step(self, run: dict[str, Any]) -> dict[str, Any]:
        result = {
            "file_id": self._id("file"),
            "file_name": "contract.txt",
            "score": 0.7,
            "content": [{"type": "text", "text": SEARCH_RESULT}],
        }
        call = {"id": self._id("call"), "type": "file_search", "file_search": {"results": [result]}}
        return self._step(run, "tool_calls", {"tool_calls": [call]})

    def _require_action(self, run: dict[str, Any]) -> None:
        function = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
        call = {"id": self._id("call"), "type": "function", "function": function}
        step_call = {**call, "function": {**function, "output": None}}
        step = self._step(run, "tool_calls", {"tool_calls": [step_call]})
        step.update(status="in_progress", completed_at=None)
        self.steps[run["id"]].append(step)
        run["status"] = "requires_action"
        run["required_action"] = {
            "type": "submit_tool_outputs",
            "submit_tool_outputs": {"tool_calls": [call]},
        }

    def _public(self, run: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in run.items() if not k.startswith("_")}

    def _advance(self, run: dict[str, Any]) -> None:
        if run["status"] in TERMINAL or run["status"] == "requires_action":
            return
        self.polls[run["id"]] += 1
        if self.polls[run["id"]] < self.polls_to_complete:
            if run["status"] != "cancelling":
                run["status"] = "in_progress"
            run["started_at"] = run["started_at"] or self._now()
        elif (
            run["_plan"].get("requires_action") == "yes"
            and not run.get("_submitted")
            and run["status"] != "cancelling"
        ):
            self._require_action(run)
        else:
            self._finish(run)

    def _run_response(self, run: dict[str, Any]) -> web.Response:
        return web.json_response(
            self._public(run), headers={"openai-poll-after-ms": self.poll_after_ms}
        )

    async def create_run(self, request: web.Request, key: str, tid: str) -> web.StreamResponse:
        body = await request.json()
        for m in body.get("additional_messages") or []:
            self._add_message(tid, m["role"], m["content"], None)
        run = self._new_run(tid, body)
        if body.get("stream"):
            return await self._stream_run(request, run)
        if self.create_pause:
            await asyncio.sleep(self.create_pause)
        self.creates_answered.append(run["id"])
        return self._run_response(run)

    async def create_thread_and_run(self, request: web.Request, key: str) -> web.StreamResponse:
        body = await request.json()
        thread = self._new_thread(body.get("thread") or {})
        run = self._new_run(thread["id"], body)
        if body.get("stream"):
            return await self._stream_run(request, run)
        if self.create_and_run_gate is not None:
            await self.create_and_run_gate.wait()
        return self._run_response(run)

    async def _stream_run(
        self, request: web.Request, run: dict[str, Any], *, created: bool = True
    ) -> web.StreamResponse:
        resp = _sse_response()
        await resp.prepare(request)
        if created:
            await resp.write(_sse(self._public(run), event="thread.run.created"))
        run["status"] = "in_progress"
        await resp.write(_sse(self._public(run), event="thread.run.in_progress"))
        if self.stream_pause:
            await asyncio.sleep(self.stream_pause)  # a run takes time
        self._finish(run)
        for step in self.steps[run["id"]]:
            await resp.write(_sse(step, event="thread.run.step.completed"))
        await resp.write(_sse(self._public(run), event=f"thread.run.{run['status']}"))
        await resp.write(b"event: done\ndata: [DONE]\n\n")
        return resp

    async def list_runs(self, request: web.Request, key: str, tid: str) -> web.Response:
        runs = [self._public(r) for r in self.runs.values() if r["thread_id"] == tid]
        return _page(runs, request, default_order="desc")

    async def get_run(self, request: web.Request, key: str, tid: str, rid: str) -> web.Response:
        run = self.runs.get(rid)
        if run is None or run["thread_id"] != tid:
            return web.json_response({"error": {"message": "no such run"}}, status=404)
        if request.method == "GET":
            self._advance(run)
        return self._run_response(run)

    async def cancel_run(self, request: web.Request, key: str, tid: str, rid: str) -> web.Response:
        run = self.runs[rid]
        run["_plan"]["outcome"] = "cancelled"
        run["status"] = "cancelling"
        return self._run_response(run)

    async def submit_outputs(
        self, request: web.Request, key: str, tid: str, rid: str
    ) -> web.StreamResponse:
        body = await request.json()
        run = self.runs[rid]
        if run["status"] != "requires_action":
            return web.json_response({"error": {"message": "run is not waiting"}}, status=400)
        outputs = {o["tool_call_id"]: o.get("output") for o in body.get("tool_outputs") or []}
        for step in self.steps[rid]:
            if step["status"] != "in_progress":
                continue
            for call in step["step_details"]["tool_calls"]:
                call["function"]["output"] = outputs.get(call["id"])
            step.update(status="completed", completed_at=self._now())
        run["status"] = "in_progress"
        run["required_action"] = None
        run["_submitted"] = True
        self.polls[rid] = 0
        if body.get("stream"):
            return await self._stream_run(request, run, created=False)
        return self._run_response(run)

    async def list_steps(self, request: web.Request, key: str, tid: str, rid: str) -> web.Response:
        if fault := await self._fault(request):
            return fault
        self.fetches.append(("steps", rid, key))
        limit = min(int(request.query.get("limit", "20")), self.steps_page_size)
        steps = self.steps[rid]
        if _RESULTS_CONTENT not in request.query.getall("include[]", []):
            # As the API: a file search result's text only when asked for.
            steps = [without_result_content(s) for s in steps]
        return _page(steps, request, default_order="desc", limit=limit)

    async def _fault(self, request: web.Request) -> web.Response | None:
        if self.faults.fetch_gate is not None:
            await self.faults.fetch_gate.wait()
        if self.faults.hang_fetches > 0:
            self.faults.hang_fetches -= 1
            await asyncio.Event().wait()
        if self.faults.drop_connections > 0:
            self.faults.drop_connections -= 1
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if self.faults.fetch_statuses:
            status = self.faults.fetch_statuses.pop(0)
            return self._injected(request, status)
        return await self._random_fault(request)

    async def _random_fault(self, request: web.Request) -> web.Response | None:
        f = self.faults
        if f.latency > 0:
            await asyncio.sleep(f.latency)
        if f.rate_429 <= 0 and f.rate_500 <= 0 and f.rate_drop <= 0:
            return None
        draw = f.rng.random()
        if draw < f.rate_drop:
            f.injected["drop"] += 1
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if draw < f.rate_drop + f.rate_429:
            f.injected["429"] += 1
            return self._injected(request, 429)
        if draw < f.rate_drop + f.rate_429 + f.rate_500:
            f.injected["500"] += 1
            return self._injected(request, 500)
        return None

    def _injected(self, request: web.Request, status: int) -> web.Response:
        message = "injected"
        if self.faults.echo_key:
            message = f"injected; incorrect API key provided: {_key(request)}"
        return web.json_response(
            {"error": {"message": message, "code": str(status)}},
            status=status,
            headers={"retry-after": self.faults.retry_after},
        )


@dataclass
class Canned:
    """A response for /canned/<name>: sent as given, chunk by chunk. `length` forces a
    Content-Length (otherwise aiohttp picks chunked encoding)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    length: int | None = None


def _key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    # As some gateways do: a key in the query string.
    return request.headers.get("api-key") or request.query.get("api-key")


def _page(
    items: list[dict[str, Any]],
    request: web.Request,
    *,
    default_order: str,
    limit: int | None = None,
) -> web.Response:
    order = request.query.get("order", default_order)
    limit = limit or int(request.query.get("limit", "20"))
    ordered = sorted(items, key=lambda o: (o["created_at"], o["id"]), reverse=order == "desc")
    after = request.query.get("after")
    if after:
        idx = next((i for i, o in enumerate(ordered) if o["id"] == after), len(ordered))
        ordered = ordered[idx + 1 :]
    page = ordered[:limit]
    return web.json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(ordered) > limit,
        }
    )


def _sse_response() -> web.StreamResponse:
    return web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )


def _sse(obj: Any, *, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(obj)}\n\n".encode()


_RESULTS_CONTENT = "step_details.tool_calls[*].file_search.results[*].content"


def without_result_content(step: dict[str, Any]) -> dict[str, Any]:
    calls = step.get("step_details", {}).get("tool_calls")
    if not calls or not any(c.get("type") == "file_search" for c in calls):
        return step
    stripped = []
    for call in calls:
        if call.get("type") == "file_search":
            results = call["file_search"].get("results") or []
            call = {
                **call,
                "file_search": {
                    **call["file_search"],
                    "results": [{k: v for k, v in r.items() if k != "content"} for r in results],
                },
            }
        stripped.append(call)
    return {**step, "step_details": {**step["step_details"], "tool_calls": stripped}}
