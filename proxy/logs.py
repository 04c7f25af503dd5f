"""Logging: one access line per request, text or JSON, with secrets masked.

`configure_logging(settings)` is called by `usage-proxy serve`, never at import; it returns a
function that undoes it. Access lines come from `AccessLogger`, which aiohttp calls after the
response has been sent. Every record that reaches the handler passes `RedactingFilter`, which
masks anything that looks like an API key or a bearer token: the code never logs a credential
on purpose, and the filter is the defence in depth for the places that might by accident
(an upstream error body echoing a key, an exception message).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, Request, StreamResponse

from proxy.forwarding.forward import REQUEST_ID
from proxy.forwarding.policy import REFUSED_BY
from proxy.redact import redact
from proxy.settings import Settings

__all__ = [
    "ACCESS_LOGGER",
    "AccessLogger",
    "JsonFormatter",
    "RedactingFilter",
    "configure_logging",
    "log_client_gone",
    "redact",
]

ACCESS_LOGGER = "proxy.access"

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# aiohttp makes one access logger per connection: ids are counted per process, and the random
# prefix tells replicas (all pid 1 in their containers) apart.
_ID_PREFIX = os.urandom(3).hex()
_ids = itertools.count(1)
# Loggers whose INFO lines say nothing an operator needs, quieted while logging is configured.
_CHATTY = ("alembic.runtime.plugins",)
# Set on a record whose message and fields are already masked (a leading "_" keeps it out of
# the JSON output). Only the access logger sets it: it logs every request, and masking each
# of its fields again in the filter cost more than the rest of the line (bench/README.md).
_REDACTED = "_redacted"
# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class RedactingFilter(logging.Filter):
    """Masks secrets in the message, its arguments, the traceback and `extra` fields. Installed
    on the handler, so it sees records of every logger, aiohttp's and SQLAlchemy's included."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.__dict__.get(_REDACTED):
            return True  # the access logger masked its fields itself, once per field
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
            # The formatter would render the traceback again from exc_info, unmasked.
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name, value in record.__dict__.items():
            if name not in _STANDARD and isinstance(value, str):
                setattr(record, name, redact(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, any `extra`
    fields, and the traceback as `exc_info` text."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                out[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc_info"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


class _UtcFormatter(logging.Formatter):
    converter = time.gmtime
    default_msec_format = "%s.%03dZ"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time of the write, so a test that swaps stderr
    (or a server whose stderr is redirected later) is never left with a closed stream."""

    previous_level: int = logging.NOTSET

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


_LOOKUPS = ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")
_NO_LOOKUPS = (None, False, False, False)


def _record_lookups(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """Set what every LogRecord looks up (caller, thread, process); the previous values."""
    previous = tuple(getattr(logging, name) for name in _LOOKUPS)
    for name, value in zip(_LOOKUPS, values, strict=True):
        setattr(logging, name, value)
    return previous


def configure_logging(settings: Settings) -> Callable[[], None]:
    """Send every log record at `settings.log_level` or above to stderr, as text or as JSON
    (`settings.log_format`), through the redacting filter. Replaces what an earlier call
    installed. Returns a function that restores the root logger as it was."""
    root = logging.getLogger()
    handler = _StderrHandler()
    handler.previous_level = root.level
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
        # Undoing the replacement must restore what was there before the first call.
        handler.previous_level = old.previous_level
    handler.addFilter(RedactingFilter())
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_UtcFormatter(_TEXT_FORMAT, "%Y-%m-%dT%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # The logging HOWTO's optimisations: neither format shows the caller, thread or process,
    # and looking them up was a third of an access line's cost (bench/README.md).
    lookups = _record_lookups(_NO_LOOKUPS)
    chatty = {name: logging.getLogger(name).level for name in _CHATTY}
    for name in chatty:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))

    def undo() -> None:
        _record_lookups(lookups)
        root.removeHandler(handler)
        root.setLevel(handler.previous_level)
        for name, level in chatty.items():
            logging.getLogger(name).setLevel(level)

    return undo


class AccessLogger(AbstractAccessLogger):
    """One INFO line per request: method, path (never the query string, which may carry a
    secret), status, duration in milliseconds, a request id, the client's address and, when
    the upstream sent one, its x-request-id. No header value is ever logged.

    aiohttp calls `log` after the response is sent. For a request whose client went away
    before that, aiohttp cancels the handler and logs nothing, so the Forwarder calls
    `log_client_gone`, which logs through this class too."""

    __slots__ = ()

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        # The raw path is percent-encoded, so a path cannot forge a second log line.
        path = request.rel_url.raw_path
        method = request.method
        ms = round(time * 1000, 1)
        request_id = request.get(REQUEST_ID) or f"{_ID_PREFIX}-{next(_ids)}"
        upstream_id = response.headers.get("x-request-id")
        # The client and the upstream choose these three; the rest is the proxy's own.
        seen = f"{method} {path} {upstream_id}"
        if redact(seen) != seen:
            method, path = redact(method), redact(path)
            upstream_id = redact(upstream_id) if upstream_id else upstream_id
        fields = {
            "method": method,
            "path": path,
            "status": response.status,
            "duration_ms": ms,
            "request_id": request_id,
            "remote": request.remote,
            _REDACTED: True,
        }
        if upstream_id:
            fields["upstream_request_id"] = upstream_id
        refused_by = request.get(REFUSED_BY)  # the proxy answered it (a budget), not upstream
        if refused_by:
            fields["refused_by"] = refused_by
        self.logger.info(
            "%s %s %s %.1fms id=%s%s%s",
            method,
            path,
            response.status,
            ms,
            request_id,
            f" upstream_id={upstream_id}" if upstream_id else "",
            f" refused_by={refused_by.replace(' ', '_')}" if refused_by else "",
            extra=fields,
        )


# nginx's "client closed request": the client left before any response began.
CLIENT_CLOSED = 499


def log_client_gone(request: Request, response: StreamResponse | None, seconds: float) -> None:
    """The access line of a request whose client went away mid-response (a Forwarder's
    `on_client_gone`): aiohttp writes none for a handler it cancels. The status is the one the
    client was sent, or 499 when it left before any."""
    access = AccessLogger(logging.getLogger(ACCESS_LOGGER), "")
    if access.enabled:
        access.log(request, response or StreamResponse(status=CLIENT_CLOSED), seconds)
