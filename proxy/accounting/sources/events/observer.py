"""Observer: usage of responses, chat completions and embeddings, one row per object.

What is recorded, and when (recognition is by content: see proxy.accounting.sources.events.rows):

- A response, the first time it is seen in a terminal status: the answer to its POST, a GET
  poll of a background response, or the `response` of a `response.completed`, `.failed` or
  `.incomplete` event. A bounded in-memory set of recorded ids is only a fast path, so polling
  a finished response costs no write; the unique (kind, object_id) decides.
- A chat completion: a 2xx POST answered with a `chat.completion` body, or a stream of
  `chat.completion.chunk` events once it ends. A stream without usage is estimated
  (proxy.accounting.estimate.chat) and marked usage_source "estimated"; when its request was
  larger than `max_observed_request`, the prompt is estimated from the part kept (a lower
  bound, proxy.accounting.estimate.partial), marked "estimated_partial", logged with the
  request id and counted (`usage_proxy_estimated_partial_total`). Other kinds report their
  usage, so a cut request costs them nothing but ids (conversation, prompt) read from it.
- Embeddings: a 2xx POST answered with a list of embeddings. The list has no id, so object_id
  is the upstream's `x-request-id` header (Azure: `apim-request-id`), else a generated
  "proxy-<uuid4 hex>", unique per request.
- A chat stream that breaks off (the client went away, or the upstream cut it) after its first
  chunk is recorded with status "incomplete" and estimated usage, because the tokens generated
  until the cut are billed; if its usage chunk had already arrived, that usage is recorded. A
  response stream that breaks off records nothing: the response can still be retrieved, and a
  GET that shows it terminal records it then.
- 4xx/5xx answers of the upstream record nothing and are counted per team in metrics.

Failures: rows go to `submit` (the RowWriter's), which writes them in batches off this task
and keeps them while the database is down. Anything else that raises is logged by the
dispatcher's guard (fail open: the client's traffic never waits on this).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from proxy.accounting.attribution import Attribution
from proxy.accounting.estimate.chat import ChatStream, TokenCounter, estimate_chat_stream
from proxy.accounting.estimate.partial import estimate_partial_prompt
from proxy.accounting.estimate.tokenizer import counter_for_model
from proxy.accounting.pricing import PriceTable
from proxy.accounting.sources.events.containers import ContainerJob, api_context
from proxy.accounting.sources.events.cut import (
    cut_embedding_row,
    decoded_head,
    is_cut_embeddings,
)
from proxy.accounting.sources.events.deployment import deployment_of
from proxy.accounting.sources.events.rows import (
    TERMINAL_RESPONSE_EVENTS,
    chat_row,
    chat_stream_row,
    embedding_row,
    is_chat_completion,
    is_embedding_list,
    response_containers,
    response_in_event,
    response_row,
    terminal_response,
)
from proxy.accounting.sources.events.tools import container_memory
from proxy.accounting.usage import UsageRow
from proxy.errors import AccountingError
from proxy.forwarding.decode import DecodeError, SSEEvent
from proxy.forwarding.exchange import Exchange
from proxy.keys import REFUSED

__all__ = ["Attribute", "EventObserver"]

_log = logging.getLogger("proxy.accounting.events")

# Bodies above this are parsed off the event loop, so a large embeddings answer cannot stall it.
_PARSE_INLINE = 256 * 1024
_QUOTED_TERMINALS = tuple(f'"{name}"' for name in TERMINAL_RESPONSE_EVENTS)
_OFF_LOOP: Any = object()


class Attribute(Protocol):
    """Who pays for a request (proxy.accounting.attributor.Attributor.attribute): `sent` are
    its headers as sent upstream, `own` as received; `keep=False` for a key the upstream
    refused; `query` is the query string as sent."""

    def __call__(
        self,
        sent: Mapping[str, str] | None,
        own: Mapping[str, str],
        *,
        keep: bool = ...,
        query: str = ...,
    ) -> Awaitable[Attribution]: ...


class EventObserver:
    """Records responses, chat completions and embeddings: `attribute` says who pays for a
    request, `prices` prices the usage, `submit` takes each row to write (and keeps
    it while the database is down), `api_error` counts an upstream error by team and status,
    `partial` (if given) a row whose prompt was estimated from part of its request, by kind."""

    def __init__(
        self,
        attribute: Attribute,
        prices: PriceTable,
        submit: Callable[[UsageRow], None],
        *,
        api_error: Callable[[str | None, int], None],
        partial: Callable[[str], None] | None = None,
        containers: Callable[[str, tuple[str, ...], ContainerJob], None] | None = None,
        seen_capacity: int = 100_000,
    ) -> None:
        self._partial = partial
        self._claim = containers
        self._attribute = attribute
        self._prices = prices
        self._submit = submit
        self._count_api_error = api_error
        self._capacity = seen_capacity
        # Keyed weakly: should an exchange's end be dropped (a full dispatcher queue), its
        # stream goes with the exchange instead of staying here.
        self._streams: weakref.WeakKeyDictionary[Exchange, ChatStream] = weakref.WeakKeyDictionary()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._containers: OrderedDict[str, None] = OrderedDict()

    # --- hooks ---------------------------------------------------------------------------
    async def on_event(self, exchange: Exchange, event: SSEEvent) -> None:
        if not _ok(exchange.status) or not _interesting(event):
            return
        try:
            data = event.json()
        except DecodeError:
            return
        if isinstance(data, dict) and data.get("object") == "chat.completion.chunk":
            stream = self._streams.get(exchange)
            if stream is None:
                stream = self._streams[exchange] = ChatStream()
            stream.add(data)
            return
        response = response_in_event(data)
        if response is not None:
            await self._response(exchange, response)

    async def on_response(self, exchange: Exchange) -> None:
        # Most exchanges are not streams: a length test spares building a weak reference.
        stream = self._streams.pop(exchange, None) if self._streams else None
        status = exchange.status
        if status is None:
            return
        if status >= 400:
            await self._api_error(exchange, status)
            return
        if not _ok(status):
            return
        if stream is not None:
            await self._chat_stream(exchange, stream)
            return
        body = _json_body(exchange)
        if body is _OFF_LOOP:
            body = await asyncio.get_running_loop().run_in_executor(None, exchange.json)
        if (response := terminal_response(body)) is not None:
            await self._response(exchange, response)
        elif (
            body is None
            and exchange.response_truncated
            and exchange.method == "POST"
            and is_cut_embeddings(decoded_head(exchange.raw_response_body, _encoding(exchange)))
        ):
            await self._cut_embeddings(exchange)
        elif exchange.method != "POST" or not isinstance(body, dict):
            return  # a GET of a stored chat completion was billed when it was created
        elif is_chat_completion(body):
            who = await self._who(exchange)
            oid = body.get("id")
            oid = oid if isinstance(oid, str) else _request_id(exchange)
            self._record(chat_row(body, who, self._prices, _now(), object_id=oid), exchange)
        elif is_embedding_list(body):
            who = await self._who(exchange)
            oid = _request_id(exchange)
            self._record(embedding_row(body, who, self._prices, _now(), object_id=oid), exchange)

    async def on_error(self, exchange: Exchange) -> None:
        stream = self._streams.pop(exchange, None)
        if exchange.status is not None and exchange.status >= 400:
            await self._api_error(exchange, exchange.status)
        elif stream is not None and stream.id is not None:
            await self._chat_stream(exchange, stream)

    # --- recording -----------------------------------------------------------------------
    async def _response(self, exchange: Exchange, response: dict[str, Any]) -> None:
        rid = response["id"]
        if rid in self._seen:
            return
        who = await self._who(exchange)
        request = exchange.request_json() if exchange.method == "POST" else None
        request = request if isinstance(request, dict) else None
        containers = response_containers(response)
        # With a claim (the row writer's), the database decides which response a container's
        # session is charged to, across replicas; without, this process's memory does.
        known = containers if self._claim is not None else self._containers.keys()
        row = response_row(
            response, who, self._prices, _now(), request=request, known_containers=known
        )
        if self._claim is not None and containers:
            prefix, query = api_context(exchange.path, exchange.query_string)
            job = ContainerJob(prefix, query, container_memory(response, request))
            self._claim(rid, tuple(sorted(containers)), job)
        for container in containers:
            self._remember(self._containers, container)
        self._record(row, exchange)
        self._remember(self._seen, rid)

    async def _cut_embeddings(self, exchange: Exchange) -> None:
        """An embeddings answer larger than max_observed_body: estimated from the request
        rather than lost (cut.py), with a warning naming the request."""
        request = exchange.request_json()
        request = request if isinstance(request, dict) else None
        model = _str(request.get("model")) if request else None
        who = await self._who(exchange)
        # Counting up to max_observed_request of inputs takes a while: off the loop.
        row = await asyncio.get_running_loop().run_in_executor(
            None,
            functools.partial(
                cut_embedding_row,
                request,
                counter_for_model(model),
                who,
                self._prices,
                _now(),
                object_id=_request_id(exchange),
            ),
        )
        _log.warning(
            "request %s: an embeddings answer larger than max_observed_body; its usage is "
            "estimated from the request (usage_source %r)",
            exchange.request_id,
            row.usage_source,
        )
        if row.usage_source == "estimated_partial" and self._partial is not None:
            self._partial(row.kind)
        self._record(row, exchange)

    async def _chat_stream(self, exchange: Exchange, stream: ChatStream) -> None:
        request = exchange.request_json()
        request = request if isinstance(request, dict) else None
        model = stream.model or (_str(request.get("model")) if request else None)
        estimate = None
        # Larger than max_observed_request: only a cut copy, which JSON cannot parse.
        partial = request is None and exchange.request_body_truncated
        if stream.usage is None:
            try:
                # Tokenizing a long stream takes a while: off the loop, as the collector does.
                estimate = await asyncio.get_running_loop().run_in_executor(
                    None,
                    _estimate,
                    request,
                    exchange.request_body if partial else b"",
                    stream,
                    counter_for_model(model),
                )
            except AccountingError:
                # The row is still written, with usage_source "none", so the event is counted.
                _log.exception("cannot estimate chat completion %s", stream.id)
        who = await self._who(exchange)
        oid = stream.id or _request_id(exchange)
        row = chat_stream_row(
            stream,
            who,
            self._prices,
            _now(),
            object_id=oid,
            estimate=estimate,
            model=model,
            partial=partial,
        )
        if row.usage_source == "estimated_partial":
            _log.warning(
                "request %s (chat completion %s) is larger than max_observed_request: its "
                "prompt is estimated from the first %d bytes, a lower bound "
                '(usage_source "estimated_partial")',
                exchange.request_id,
                oid,
                len(exchange.request_body),
            )
            if self._partial is not None:
                self._partial(row.kind)
        self._record(row, exchange)

    def _record(self, row: UsageRow, exchange: Exchange) -> None:
        row.deployment = deployment_of(exchange.path)
        # Handed to the row writer, which batches rows into one transaction: a transaction per
        # row here capped recording at ~600 rows/s (bench/README.md, finding 1).
        self._submit(row)

    async def _api_error(self, exchange: Exchange, status: int) -> None:
        keep = status not in REFUSED  # a key the upstream refused is not kept
        who = await self._who(exchange, keep=keep)
        self._count_api_error(who.team, status)

    async def _who(self, exchange: Exchange, *, keep: bool = True) -> Attribution:
        return await self._attribute(
            exchange.upstream_headers,
            exchange.request_headers,
            keep=keep,
            query=exchange.query_string,
        )

    def _remember(self, seen: OrderedDict[str, None], key: str) -> None:
        seen[key] = None
        seen.move_to_end(key)
        if len(seen) > self._capacity:
            seen.popitem(last=False)


def _estimate(
    request: dict[str, Any] | None, prefix: bytes, stream: ChatStream, count: TokenCounter
) -> tuple[int, int]:
    prompt, completion = estimate_chat_stream(request, stream, count)
    if request is None and prefix:
        prompt = estimate_partial_prompt(prefix, count)
    return prompt, completion


def _ok(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _interesting(event: SSEEvent) -> bool:
    # Most events are text deltas of other kinds: a substring test spares parsing them.
    if event.event in TERMINAL_RESPONSE_EVENTS:
        return True
    if event.event.startswith(("response.", "thread.")):
        return False
    data = event.data
    return "chat.completion.chunk" in data or any(t in data for t in _QUOTED_TERMINALS)


def _request_id(exchange: Exchange) -> str:
    headers = exchange.response_headers
    for name in ("x-request-id", "apim-request-id"):
        value = headers.get(name) if headers is not None else None
        # Printable only: an id with bytes that were not UTF-8 would be refused by PostgreSQL.
        value = "".join(c for c in value if c.isprintable()).strip() if value else None
        if value:
            return value[:255]
    return f"proxy-{uuid.uuid4().hex}"


def _encoding(exchange: Exchange) -> str | None:
    headers = exchange.response_headers
    return headers.get("Content-Encoding") if headers else None


def _json_body(exchange: Exchange) -> Any:
    """The response body as JSON when it may carry usage, else None; _OFF_LOOP when it is too
    large to parse here. Not a coroutine: for a chat completion, awaiting one cost as much as
    the checks in it."""
    if exchange.content_type != "application/json":  # which also rules out SSE
        return None
    raw = exchange.raw_response_body
    compressed = bool(
        exchange.response_headers and exchange.response_headers.get("Content-Encoding")
    )
    # find, not `in`: `in` first tries the needle as an int and pays for the TypeError.
    if not compressed and raw.find(b'"usage"') < 0:
        return None
    if len(raw) <= _PARSE_INLINE:
        return exchange.json()
    return _OFF_LOOP
