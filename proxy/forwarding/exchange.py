"""The observation seam: what forwarding hands to observers, and how it is delivered.

Contract:
- Every exchange ends in exactly one `on_response` or one `on_error` for each observer that
  defines it. `on_event` fires for each parsed server-sent event, before the exchange ends.
- Hooks run on the dispatcher's worker task, never on the client's path. A hook that raises is
  logged with its traceback and the others still run; a slow hook delays only later hooks.
- Observers are read-only. A missing hook method means "not interested".
- A held exchange (`exchange.hold` is not None: proxy.forwarding.holds) is delivered before its
  answer's last bytes go to the client, which wait until every observer that retained the hold
  released it, or a timeout. The dispatcher holds a part of it itself until `on_response` has
  been delivered to every observer (or dropped), so an observer that retains nothing releases
  nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.forwarding.decode import BodyTooLarge, DecodeError, SSEEvent, decode_body, parse_json

__all__ = ["Dispatcher", "Exchange", "Hold", "Observer"]

_log = logging.getLogger("proxy.observers")

_UNSET: Any = object()


class Hold:
    """An answer held back until what observers queued for its exchange is stored.

    It is released once every part of it is: one part is the dispatcher's (released once
    `on_response` was delivered to every observer), and `retain()` adds one for the caller,
    which calls what it returns when it is done (once; more calls do nothing). Only the
    Forwarder waits on it, bounded (proxy.forwarding.holds)."""

    __slots__ = ("_done", "_parts")

    def __init__(self) -> None:
        self._parts = 1
        self._done = asyncio.Event()

    @property
    def released(self) -> bool:
        return self._done.is_set()

    def retain(self) -> Callable[[], None]:
        """Keep the answer held until the returned callable is called."""
        self._parts += 1
        pending = True

        def release() -> None:
            nonlocal pending
            if pending:
                pending = False
                self.release()

        return release

    def release(self) -> None:
        """Release one part (the dispatcher's, or a retained one through its callable)."""
        self._parts -= 1
        if self._parts <= 0:
            self._done.set()

    async def wait(self) -> None:
        await self._done.wait()


# Slots: one is built per request, and observers read its fields many times over.
@dataclass(eq=False, slots=True, weakref_slot=True)
class Exchange:
    """One request and its response, as far as observers may see it.

    `request_body` and `raw_response_body` are copies capped at the configured limits;
    `*_truncated` says when the cap cut them. The response copy is the wire bytes; `json()`
    decodes Content-Encoding and parses it lazily, on the observer's side of the seam. The
    decoded copy is capped at `max_body` bytes too: beyond it `json()` returns None and sets
    `response_truncated`.
    """

    request_id: str
    method: str
    path: str
    query_string: str
    request_headers: CIMultiDictProxy[str]
    # As sent upstream: hop-by-hop headers, those named in Connection and X-Usage-* removed.
    # None when nothing was sent. The credential a request used is read from these
    # (proxy.keys.used_credential), never from a header the upstream did not get.
    upstream_headers: CIMultiDict[str] | None = None
    request_body: bytes = b""
    request_body_truncated: bool = False
    started_at: float = field(default_factory=time.time)
    status: int | None = None
    response_started_at: float | None = None
    response_headers: CIMultiDictProxy[str] | None = None
    raw_response_body: bytes = b""
    response_truncated: bool = False
    events: list[SSEEvent] = field(default_factory=list)
    ended_at: float | None = None
    error: str | None = None
    client_disconnected: bool = False
    max_body: int | None = None
    # Set when a holder held the answer's end (proxy.forwarding.holds): observers may retain it.
    hold: Hold | None = None
    _json: Any = field(default=_UNSET, repr=False)
    _request_json: Any = field(default=_UNSET, repr=False)
    # Every observer asks for it; response headers never change once received.
    _content_type: str | None = field(default=None, repr=False)

    @property
    def content_type(self) -> str:
        """The response's media type, lower-case, without parameters ("" before headers)."""
        if self._content_type is None:
            if self.response_headers is None:
                return ""
            value = self.response_headers.get("Content-Type", "")
            self._content_type = value.split(";")[0].strip().lower()
        return self._content_type

    @property
    def is_sse(self) -> bool:
        return self.content_type == "text/event-stream"

    def response_body(self) -> bytes:
        """The response copy with Content-Encoding undone, at most `max_body` bytes of it.
        Raises DecodeError (BodyTooLarge when the cap is reached)."""
        enc = self.response_headers.get("Content-Encoding") if self.response_headers else None
        if not enc:
            return self.raw_response_body
        return decode_body(self.raw_response_body, enc, limit=self.max_body)

    def json(self) -> Any:
        """The response body as JSON, or None when it is absent, truncated or unreadable."""
        if self._json is _UNSET:
            self._json = None
            if self.raw_response_body and not self.response_truncated:
                try:
                    self._json = parse_json(self.response_body())
                except BodyTooLarge:
                    self.response_truncated = True
                except DecodeError:
                    pass  # unreadable copy: the observer sees None, the client was unaffected
        return self._json

    def request_json(self) -> Any:
        """The request body as JSON, or None when it is absent, truncated or not JSON."""
        if self._request_json is _UNSET:
            self._request_json = None
            if self.request_body and not self.request_body_truncated:
                with contextlib.suppress(DecodeError):
                    self._request_json = parse_json(self.request_body)
        return self._request_json


@runtime_checkable
class Observer(Protocol):
    """Any object; each hook is optional. Hooks may be plain or async functions."""


_HOOKS = ("on_event", "on_response", "on_error")
_YIELD_EVERY = 32
# Above this backlog the task stops yielding until it is back under it: a stream of tiny SSE
# events queues thousands per read, and yielding every 32 would let the backlog, and memory,
# grow with the stream (tests/fault/test_bounds.py).
_CATCH_UP = 512


class Dispatcher:
    """Delivers exchanges to observers on a background task, guarded and in order.

    `submit` never blocks and never raises: when `maxsize` items wait, the item is dropped and
    counted (fail open: forwarding must not wait on accounting).

    Items are delivered in batches: the task wakes once for everything queued since it last
    ran, so the per-item cost of waking a task is paid once per batch. Within a batch the
    task yields to the loop every `_YIELD_EVERY` items, so a burst of exchanges cannot hold the
    loop for long, unless `_CATCH_UP` items wait: then it delivers without yielding until fewer
    do, which bounds the memory they hold.
    """

    def __init__(self, observers: Iterable[object], *, maxsize: int = 100_000) -> None:
        self.observers = list(observers)
        self._hooks: Mapping[str, list[Any]] = {
            h: [getattr(o, h) for o in self.observers if callable(getattr(o, h, None))]
            for h in _HOOKS
        }
        self._items: collections.deque[tuple[str, Exchange, Any]] = collections.deque()
        self._maxsize = maxsize
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.failures = 0

    @property
    def pending(self) -> int:
        """Items submitted and not yet taken for delivery."""
        return len(self._items)

    def wants(self, hook: str) -> bool:
        return bool(self._hooks[hook])

    def submit(self, hook: str, exchange: Exchange, arg: Any = None) -> None:
        if not self._hooks[hook]:
            if exchange.hold is not None and hook == "on_response":
                exchange.hold.release()
            return
        if len(self._items) >= self._maxsize:
            self.dropped += 1
            _log.error("observer queue full; dropped %s for %s", hook, exchange.request_id)
            if exchange.hold is not None and hook == "on_response":
                exchange.hold.release()  # fail open: nobody will store what it showed
            return
        self._items.append((hook, exchange, arg))
        if not self._wake.is_set():
            self._idle.clear()
            self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="observer-dispatch")

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until everything submitted so far has been delivered (used at shutdown)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    async def stop(self, timeout: float = 10.0) -> None:
        await self.drain(timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        items = self._items
        hooks = self._hooks
        while True:
            if not items:
                self._wake.clear()
                self._idle.set()
                await self._wake.wait()
            n = 0
            while items:
                hook, exchange, arg = items.popleft()
                with_arg = hook == "on_event"
                for fn in hooks[hook]:
                    # The guard, inline: a coroutine per call of every hook cost more than
                    # some hooks' own work. A failure is logged and counted, and forwarding
                    # goes on.
                    try:
                        result = fn(exchange, arg) if with_arg else fn(exchange)
                        if result is not None and asyncio.iscoroutine(result):
                            await result
                    except asyncio.CancelledError:
                        task = asyncio.current_task()
                        if task is not None and task.cancelling():
                            raise  # stop() is cancelling the dispatcher itself
                        # An observer's own cancellation (a timeout it let escape, say) is
                        # just a failure.
                        self._failed(fn, hook, exchange)
                    except Exception:
                        self._failed(fn, hook, exchange)
                if exchange.hold is not None and hook == "on_response":
                    # Every observer had it: those that queued something retained the hold.
                    exchange.hold.release()
                n += 1
                if n % _YIELD_EVERY == 0 and len(items) < _CATCH_UP:
                    await asyncio.sleep(0)

    def _failed(self, fn: Any, hook: str, exchange: Exchange) -> None:
        self.failures += 1
        # Hooks may be plain functions or callables, not only bound methods.
        owner = getattr(fn, "__self__", None)
        name = type(owner).__name__ if owner is not None else getattr(fn, "__qualname__", repr(fn))
        _log.error("observer %s.%s failed on %s", name, hook, exchange.request_id, exc_info=True)
