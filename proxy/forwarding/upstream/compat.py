"""Every use of an aiohttp internal, in one place, and what differs between the aiohttp
versions pyproject allows.

The internals, each for speed or for transparency (bench/README.md has the figures):

- the lean client (lean.py) reads responses with aiohttp's own protocol and C parser:
  `client_proto.ResponseHandler` (`set_response_params`, `read`, `should_close`,
  `is_connected`), `client_reqrep.ConnectionKey` (what a connect error carries) and
  `http_exceptions.HttpProcessingError`;
- QuietRequest overrides `ClientRequest.update_auto_headers` and sets `_skip_auto_headers`,
  so aiohttp's ClientSession adds no header of its own to the client's;
- Relayed overrides `StreamResponse._prepare_headers` and sets `_send_headers_immediately`,
  so aiohttp's server adds no Content-Type or Server the upstream left out, and sends a
  body that is in hand with its headers in one write;
- CheckedConnection (checked.py), the protocol of every upstream connection, overrides
  `ResponseHandler.should_close` and reads its `_payload`; in aiohttp's pool it is put in
  through the connector's `_factory` (`install_protocol`), for which aiohttp has no public
  switch;
- the client connection guard (proxy/forwarding/guard.py) subclasses
  `web_protocol.RequestHandler`, reading its `_messages`, `_waiter`, `_task_handler`,
  `_request_in_progress` and `_loop`, measures heads as `http_parser.RawRequestMessage`, and
  starts a TCPSite of its own (`_host`, `_port`, `_backlog`, `_server`, `_bound_port`).

`checked()`, called when the forwarder and the site start, looks at each and says which may be
used. When one is not as this code expects (a newer aiohttp changed it), the proxy does
without: every request through aiohttp's ClientSession (session.py), the session's public
`skip_auto_headers`, or a plain StreamResponse; a session pool that never reuses a connection
(safe without the checked protocol, if slower); a plain TCPSite with aiohttp's own per-line
header limit and keep-alive timeout in place of the guard; and one warning says what is
missing.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict

__all__ = [
    "SKIPPED_AUTO_HEADERS",
    "ConnectionKey",
    "HttpProcessingError",
    "Internals",
    "QuietRequest",
    "RawRequestMessage",
    "Relayed",
    "RequestHandler",
    "ResponseHandler",
    "check",
    "checked",
    "connection_key",
    "install_protocol",
    "request_key",
    "response_class",
]

_log = logging.getLogger("proxy.forward")


class _Missing(Exception):
    """Stands in for an internal class this aiohttp does not have; never raised."""


try:
    from aiohttp.client_proto import ResponseHandler
    from aiohttp.client_reqrep import ConnectionKey
    from aiohttp.http_exceptions import HttpProcessingError
except ImportError:  # pragma: no cover - an aiohttp that moved them: check() says so
    ResponseHandler = ConnectionKey = None  # type: ignore[assignment,misc]
    HttpProcessingError = _Missing  # type: ignore[assignment,misc]

try:
    from aiohttp.http_parser import RawRequestMessage
    from aiohttp.web_protocol import RequestHandler
except ImportError:  # pragma: no cover - an aiohttp that moved them: check() says so
    RawRequestMessage = RequestHandler = None  # type: ignore[assignment,misc]

# What the guard reads of RequestHandler, and what its site sets of TCPSite.
_HANDLER_ATTRS = ("_messages", "_waiter", "_task_handler", "_request_in_progress", "_loop")
_SITE_SLOTS = ("_host", "_port", "_backlog", "_server", "_bound_port")

# The headers aiohttp's client adds to a request unless told not to.
SKIPPED_AUTO_HEADERS = (hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.CONTENT_TYPE, hdrs.USER_AGENT)
_RESPONSE_PARAMS = {"skip_payload", "read_until_eof", "auto_decompress", "read_bufsize"}


def request_key(name: str, kind: type) -> Any:
    """A key for per-request state: web.RequestKey from aiohttp 3.14 on, the plain name (which
    aiohttp takes as a key too) before."""
    make = getattr(web, "RequestKey", None)
    return make(name, kind) if make is not None else name


def connection_key(host: str, port: int, is_ssl: bool) -> Any:
    """What aiohttp's connect errors carry, so the lean client's read the same."""
    return ConnectionKey(host, port, is_ssl, True, None, None, None)


class QuietRequest(aiohttp.ClientRequest):
    """A ClientRequest that adds none of aiohttp's default headers (Accept, Accept-Encoding,
    User-Agent) and no default Content-Type: the client's own headers go through as they are.
    Session-level `skip_auto_headers` does the same but sorts and copies the skip list on
    every request (bench/README.md, finding 4); aiohttp has no cheaper public switch."""

    _SKIP: CIMultiDict[None] = CIMultiDict((h, None) for h in SKIPPED_AUTO_HEADERS)

    # Where the request keeps its skip list: a property over `_skip_auto_headers` in newer
    # aiohttp, a plain attribute in older ones.
    if isinstance(getattr(aiohttp.ClientRequest, "skip_auto_headers", None), property):

        def update_auto_headers(self, skip_auto_headers: object) -> None:
            self._skip_auto_headers = self._SKIP

    else:

        def update_auto_headers(self, skip_auto_headers: object) -> None:
            self.skip_auto_headers = self._SKIP  # type: ignore[misc]


class _Relaying(web.StreamResponse):
    unsent: tuple[str, ...] = ()

    def send_headers_with_body(self) -> None:
        """Send the headers with the first body write, where aiohttp allows it."""


class Relayed(_Relaying):
    """A StreamResponse that keeps aiohttp from adding what the upstream left out:
    Content-Type (RFC 9110 section 8.3 lets the recipient sniff instead) and Server. Date is
    still added when missing, as RFC 9110 section 6.6.1 asks of a forwarding recipient.
    aiohttp has no public switch for these defaults, hence the override."""

    def send_headers_with_body(self) -> None:
        """Hold the headers back until the first body write (or write_eof), and send them in
        the same write; aiohttp's own switch for this is a class attribute (which aiohttp 3.11
        lacks: there, the headers go in a write of their own)."""
        if _ONE_WRITE:
            self._send_headers_immediately = False

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        for name in self.unsent:
            self._headers.popall(name, None)


_ONE_WRITE = hasattr(web.StreamResponse, "_send_headers_immediately")


@dataclasses.dataclass(frozen=True)
class Internals:
    """Which of the internals above this aiohttp has as this code uses them."""

    lean_client: bool
    quiet_request: bool
    relayed: bool
    checked_pool: bool = False  # CheckedConnection can go into aiohttp's pool
    guard: bool = False  # the client connection guard can be used
    missing: tuple[str, ...] = ()


def check() -> Internals:
    """Look at aiohttp's internals (no I/O)."""
    missing: list[str] = []
    conn = _checked_connection(missing)
    lean = conn and ResponseHandler is not None and ConnectionKey is not None
    if lean:
        for name in ("set_response_params", "read", "should_close", "is_connected"):
            if not hasattr(ResponseHandler, name):
                missing.append(f"ResponseHandler.{name}")
        if hasattr(ResponseHandler, "set_response_params"):
            params = inspect.signature(ResponseHandler.set_response_params).parameters
            if not set(params) >= _RESPONSE_PARAMS:
                missing.append("ResponseHandler.set_response_params's parameters")
        try:
            connection_key("localhost", 80, False)
        except TypeError:
            missing.append("ConnectionKey's fields")
        lean = not missing
    elif conn:
        missing.append("aiohttp.client_proto.ResponseHandler or client_reqrep.ConnectionKey")
    pool = conn and "_factory" in _names(aiohttp.BaseConnector.__init__)
    if conn and not pool:
        missing.append("BaseConnector._factory")
    update = getattr(aiohttp.ClientRequest, "update_auto_headers", None)
    quiet = update is not None and list(inspect.signature(update).parameters) == [
        "self",
        "skip_auto_headers",
    ]
    if not quiet:
        missing.append("ClientRequest.update_auto_headers")
    relayed = hasattr(web.StreamResponse, "_prepare_headers")
    if not relayed:
        missing.append("StreamResponse._prepare_headers")
    if not _ONE_WRITE:
        missing.append("StreamResponse._send_headers_immediately")
    return Internals(lean, quiet, relayed, pool, _guard(missing), tuple(missing))


def _names(function: object) -> tuple[str, ...]:
    """The attribute and global names a Python function's code uses (none for C code)."""
    code = getattr(function, "__code__", None)
    return code.co_names if code is not None else ()


def _checked_connection(missing: list[str]) -> bool:
    """Whether CheckedConnection (checked.py) works on this aiohttp's ResponseHandler."""
    if ResponseHandler is None:
        missing.append("aiohttp.client_proto.ResponseHandler")
        return False
    ok = True
    if not isinstance(getattr(ResponseHandler, "should_close", None), property):
        missing.append("ResponseHandler.should_close as a property")
        ok = False
    if "_payload" not in _names(ResponseHandler.__init__):
        missing.append("ResponseHandler._payload")
        ok = False
    return ok


def _guard(missing: list[str]) -> bool:
    """Whether the client connection guard (proxy/forwarding/guard.py) works here."""
    if RequestHandler is None or RawRequestMessage is None:
        missing.append("aiohttp.web_protocol.RequestHandler or http_parser.RawRequestMessage")
        return False
    handler = _attributes(RequestHandler)
    absent = [f"RequestHandler.{name}" for name in _HANDLER_ATTRS if name not in handler]
    site = _attributes(web.TCPSite)
    absent += [f"TCPSite.{name}" for name in _SITE_SLOTS if name not in site]
    missing.extend(absent)
    return not absent


def _attributes(cls: type) -> set[str]:
    """The instance attributes of `cls` that can be told without an instance: its slots and
    what its classes' __init__ set, all along its MRO."""
    found: set[str] = set()
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        found.update((slots,) if isinstance(slots, str) else slots)
        found.update(_names(klass.__dict__.get("__init__")))
    return found


def install_protocol(connector: aiohttp.TCPConnector, factory: object) -> None:
    """Make `factory` what `connector` creates each connection's protocol with. aiohttp has no
    public switch for the protocol class; `checked().checked_pool` says this one works."""
    connector._factory = factory  # type: ignore[attr-defined]


@functools.cache
def checked() -> Internals:
    """`check()`, once per process, with one warning when something is missing."""
    found = check()
    if found.missing:
        _log.warning(
            "aiohttp %s lacks %s: %s",
            aiohttp.__version__,
            "; ".join(found.missing),
            "every request goes through aiohttp's ClientSession"
            if not found.lean_client
            else "the proxy does without it",
        )
    return found


def response_class(internals: Internals) -> type[_Relaying]:
    """The StreamResponse a relayed response is written with."""
    return Relayed if internals.relayed else _Relaying
