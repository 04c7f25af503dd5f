"""What `serve` checks before it migrates, and what it tells the operator at start: that its
port can be bound (so a port in use fails at once, before the database is touched), and the
USAGE_PROXY_* environment variables it does not know (the config file rejects unknown keys;
a misspelled variable would otherwise be ignored without a word)."""

from __future__ import annotations

import difflib
import logging
import os
import socket
from collections.abc import Mapping

from proxy.errors import ConfigError
from proxy.settings import OPTIONS

__all__ = ["require_bindable", "unknown_environment", "warn_unknown_environment"]

_log = logging.getLogger("proxy.cli")
_PREFIX = "USAGE_PROXY_"
# Read by something other than the settings: the config file's path, and the test suite's
# PostgreSQL.
_OTHER = frozenset({"USAGE_PROXY_CONFIG", "USAGE_PROXY_TEST_POSTGRES_URL"})


def require_bindable(host: str, port: int) -> None:
    """Raise ConfigError unless every address of `host` can listen on `port` now, as aiohttp
    will (SO_REUSEADDR, so a port in TIME_WAIT is free). The sockets are closed again: the
    collector process is forked before the server binds, and must not inherit a listener."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"host: cannot resolve {host!r}: {exc.strerror}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                from proxy.app import listen_error  # serve imports it next anyway

                raise listen_error(host, port, exc) from None


def unknown_environment(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """The USAGE_PROXY_* variables of `environ` that name no setting, each with the closest
    setting's variable (or None), sorted. Only names: a value may be a secret."""
    known = {opt.env for opt in OPTIONS} | _OTHER
    unknown = sorted(name for name in environ if name.startswith(_PREFIX) and name not in known)
    return [(name, _closest(name, known)) for name in unknown]


def _closest(name: str, known: set[str]) -> str | None:
    # Compared without the prefix they all share, which would make anything look close.
    tails = {k.removeprefix(_PREFIX): k for k in known}
    close = difflib.get_close_matches(name.removeprefix(_PREFIX), tails, 1, cutoff=0.75)
    return tails[close[0]] if close else None


def warn_unknown_environment(environ: Mapping[str, str] | None = None) -> None:
    """Log one warning per unknown USAGE_PROXY_* variable (see unknown_environment)."""
    for name, close in unknown_environment(os.environ if environ is None else environ):
        hint = f"; did you mean {close}?" if close else ""
        _log.warning("environment variable %s is not a setting and is ignored%s", name, hint)
