"""The checks a Settings passes on creation (proxy.settings calls `check` from __post_init__):
each bad value raises ConfigError naming its key, and the value unless it may hold a secret."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from proxy.config_values import USERINFO, check_proxy_url, families, load_ca_file
from proxy.errors import ConfigError

__all__ = ["check"]


def check(v: Mapping[str, Any], estimates: Mapping[str, int]) -> None:
    """Raise ConfigError for the first bad value of the settings `v` (name -> value);
    `estimates` are the estimator constants that are set (Settings.estimate_constants)."""
    if not 1 <= v["port"] <= 65535:
        raise ConfigError(f"port: {v['port']} is out of range (1-65535)")
    parts = urlsplit(v["upstream"])
    shown = repr(USERINFO.sub("//***@", v["upstream"], count=1))  # no part of user:password
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"upstream: {shown} is not an http(s) URL with a host")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ConfigError(f"upstream: {shown} has a bad port") from exc
    if "@" in parts.netloc:
        # Refused, not used: the upstream authenticates each request by the client's own key,
        # in the client's Authorization header, which Basic auth from the URL would collide
        # with; and never silently dropped either.
        raise ConfigError(
            f"upstream: {shown} carries user info (user:password@), which the proxy does not"
            " send; clients authenticate with their own keys"
        )
    billing = urlsplit(v["billing_url"])
    if billing.scheme not in ("http", "https") or not billing.hostname:
        raise ConfigError(f"billing_url: {v['billing_url']!r} is not an http(s) URL with a host")
    hook = urlsplit(v["alert_webhook_url"])
    if v["alert_webhook_url"] and (hook.scheme not in ("http", "https") or not hook.hostname):
        # Not echoed: a Slack or Teams webhook URL is itself a credential.
        raise ConfigError("alert_webhook_url: the value is not an http(s) URL with a host")
    if v["upstream_proxy"]:
        check_proxy_url(v["upstream_proxy"], "upstream_proxy")
    if v["upstream_ca_file"]:
        load_ca_file(v["upstream_ca_file"], ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if "://" not in v["database_url"]:
        # Shown only when it cannot hold credentials (user:password@host).
        shown = "the value" if "@" in v["database_url"] else repr(v["database_url"])
        raise ConfigError(f"database_url: {shown} is not a URL (expected scheme://...)")
    if v["log_format"] not in ("text", "json"):
        raise ConfigError(f"log_format: {v['log_format']!r} must be text or json")
    if v["log_level"].upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"log_level: {v['log_level']!r} is not a level")
    for name in (
        "upstream_timeout",
        "upstream_connect_timeout",
        "collector_lease",
        "collector_poll_interval",
        "collector_fetch_timeout",
        "mapping_poll_interval",
        "budget_refresh_interval",
        "alert_retry_base",
        "client_header_timeout",
        "client_body_timeout",
        "client_keepalive_timeout",
    ):
        if v[name] <= 0:
            raise ConfigError(f"{name}: {v[name]!r} must be > 0")
    for name in (
        "max_observed_body",
        "max_observed_request",
        "upstream_limit",
        "reported_usage_wait",
        "collector_max_backoff",
        "credential_ttl",
        "billing_pull_interval",
        "budget_strict_timeout",
        "hold_timeout",
        "unseen_after",
    ):
        if v[name] < 0:
            raise ConfigError(f"{name}: {v[name]!r} must be >= 0")
    for name in (
        "client_max_header_bytes",
        "client_max_connections",
        "collector_workers",
        "credential_limit",
        "collector_max_attempts",
    ):
        if v[name] < 1:
            raise ConfigError(f"{name}: {v[name]!r} must be >= 1")
    for name, value in estimates.items():
        if value < 0:
            raise ConfigError(f"estimate_{name}: {value!r} must be >= 0 (or -1: the fitted table)")
    families(v["estimate_families"])
