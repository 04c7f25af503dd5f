"""Single setting values from text: TOML tables flattened, values coerced to their types,
the per-family JSON checked, URLs masked, proxy URLs and CA files checked. Pure but for
load_ca_file; settings.py declares what the settings are."""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from proxy.errors import ConfigError

__all__ = [
    "USERINFO",
    "check_proxy_url",
    "coerce",
    "families",
    "flatten",
    "load_ca_file",
    "mask_url",
]


USERINFO = re.compile(r"//[^/?#]*@")


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs and the start-up line."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def coerce(name: str, kind: type, value: Any, source: str, *, secret: bool = False) -> Any:
    """`value` (from `source`: a file, a variable, a flag) as a `kind`; ConfigError names the
    setting and the value, masked when `secret`."""
    shown = "***" if secret else repr(value)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {shown} from {source} is not a valid {kind.__name__}") from None


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A TOML table's keys flattened: `[estimate] base_prompt` is `estimate_base_prompt`."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "_"))
        else:
            out[name] = value
    return out


def families(text: str) -> dict[str, dict[str, Any]]:
    """The per-family estimate constants of `estimate_families` (JSON), checked."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise ConfigError(f"estimate_families: {text[:80]!r} is not JSON") from None
    if not isinstance(value, dict) or not all(
        isinstance(f, str) and isinstance(t, dict) for f, t in value.items()
    ):
        raise ConfigError("estimate_families: must be an object of {family: {name: value}}")
    for family, table in value.items():
        for name, number in table.items():
            if isinstance(number, bool) or not isinstance(number, int) or number < 0:
                raise ConfigError(
                    f"estimate.{family}.{name}: {number!r} must be a whole number >= 0"
                )
    return value


def check_proxy_url(value: str, source: str) -> str:
    """`value`, checked as an egress proxy URL, with http:// put before a bare host:port as
    curl and requests do; ConfigError names `source` (a setting or an environment variable)
    and shows the URL with its password masked."""
    if "://" not in value:
        value = "http://" + value
    shown = repr(mask_url(value) if "@" in value else value)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"{source}: {shown} is not a URL (or has a bad port)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{source}: {shown} is not an http(s) proxy URL with a host"
            " (http:// and https:// proxies are supported; SOCKS is not)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{source}: {shown} has a path; a proxy URL is scheme://host:port")
    return value


def load_ca_file(path: str, context: ssl.SSLContext, source: str = "upstream_ca_file") -> None:
    """Add the PEM certificates in `path` to `context`'s trust roots; ConfigError when the
    file cannot be read or holds no certificate."""
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{source}: {path!r} holds no PEM certificate ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{source}: {path!r} cannot be read: {exc.strerror or exc}") from None
