"""Settings: one declaration per option.

Precedence, highest first: command-line flag > environment variable (USAGE_PROXY_<NAME>) >
TOML config file (--config / USAGE_PROXY_CONFIG) > default. In the file, a table flattens into
its prefix: `[estimate] base_prompt = 105` is the setting `estimate_base_prompt`.

A bad value raises ConfigError naming the key and the value; secrets are never echoed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from proxy.config_values import (
    USERINFO,
    check_proxy_url,
    coerce,
    families,
    flatten,
    load_ca_file,
    mask_url,
)
from proxy.errors import ConfigError

__all__ = ["OPTIONS", "Option", "Settings", "load_settings", "mask_url"]


def _est(help: str) -> Any:
    # An estimator constant: -1 leaves it to the fitted table (proxy/accounting/estimate/).
    return _opt(-1, f"{help} (-1: the fitted table)", flag=False)


def _opt(default: Any, help: str, *, secret: bool = False, flag: bool = True) -> Any:
    return field(
        default=default, repr=not secret, metadata={"help": help, "secret": secret, "flag": flag}
    )


@dataclass(frozen=True)
class Settings:
    """Every setting, with its type, default and help: the one declaration of each option."""

    host: str = _opt("127.0.0.1", "address to listen on")
    port: int = _opt(8080, "port to listen on (1-65535)")
    upstream: str = _opt(
        "https://api.openai.com", "the API server to forward to (user:password@ is refused)"
    )
    database_url: str = _opt("sqlite+aiosqlite:///usage.db", "SQLAlchemy async database URL")
    upstream_timeout: float = _opt(600.0, "seconds to wait for the upstream's response headers")
    upstream_connect_timeout: float = _opt(30.0, "seconds to wait for a connection to the upstream")
    upstream_limit: int = _opt(
        0,
        "maximum upstream connections (0: unlimited); with a limit, every request goes through"
        " aiohttp's pool, ~40 us more CPU per request",
        flag=False,
    )
    upstream_proxy: str = _opt(
        "",
        "egress proxy URL (http:// or https://, user:password@ allowed) for the upstream, the"
        " collector and the billing API; wins over HTTPS_PROXY/HTTP_PROXY, NO_PROXY still applies"
        " ('': those variables)",
        flag=False,
    )
    upstream_ca_file: str = _opt(
        "",
        "PEM file of extra trusted CA certificates for TLS to the upstream, the billing API and"
        " an https:// egress proxy",
        flag=False,
    )
    hold_timeout: float = _opt(
        1.0,
        "seconds at most an answer waits for accounting: a run create's answer until its"
        " collection job is stored, a run create until its intent is (then it goes anyway)",
        flag=False,
    )
    max_observed_body: int = _opt(8 * 1024 * 1024, "bytes of a response body observers see")
    max_observed_request: int = _opt(4 * 1024 * 1024, "bytes of a request body observers see")
    # Client connections (proxy/forwarding/guard.py): what a slow or half-open client may hold.
    client_header_timeout: float = _opt(
        30.0, "seconds a client has to send a request's headers, from their first byte", flag=False
    )
    client_body_timeout: float = _opt(
        120.0, "seconds a request body may pause while the proxy waits for it", flag=False
    )
    client_keepalive_timeout: float = _opt(
        75.0, "seconds an idle kept-alive client connection stays open", flag=False
    )
    client_max_header_bytes: int = _opt(
        65536, "bytes of a request's line and headers in all (more: 431)", flag=False
    )
    client_max_connections: int = _opt(
        1024,
        "client connections at once (more: 503); lowered to what the open-file limit allows",
        flag=False,
    )
    migrate: bool = _opt(True, "upgrade the database schema on start")
    key_secret: str = _opt(
        "",
        "HMAC secret for key fingerprints (unset: generated once, kept in the database)",
        secret=True,
    )
    admin_token: str = _opt(
        "",
        "bearer token for /_proxy/usage, /_proxy/metrics and the dashboard /_proxy/ui/ "
        "(unset: they answer 404)",
        secret=True,
    )
    viewer_token: str = _opt(
        "",
        "read-only token: the dashboard /_proxy/ui/ and /_proxy/usage, nothing else",
        secret=True,
    )
    log_format: str = _opt("text", "text or json")
    log_level: str = _opt("INFO", "DEBUG, INFO, WARNING or ERROR")
    pricing_file: str = _opt("", "TOML price table that overrides the packaged one")
    allow_client_team: bool = _opt(False, "honour X-Usage-Team sent by clients", flag=False)
    chat_include_usage: bool = _opt(
        False, "ask the upstream for usage on streamed chat completions", flag=False
    )
    collector_process: bool = _opt(
        True,
        "collect Assistants runs in a child process at lower CPU priority, so that a burst of "
        "finished runs does not slow forwarding (false: on the serving event loop)",
        flag=False,
    )
    collector_workers: int = _opt(16, "concurrent run collections per process", flag=False)
    collector_poll_interval: float = _opt(1.0, "seconds between scans of the job table", flag=False)
    collector_lease: float = _opt(
        10.0,
        "seconds a claimed job stays claimed unless renewed (every third of it, while held): a "
        "dead replica's jobs are free this long after its last renewal",
        flag=False,
    )
    collector_retry_base: float = _opt(
        1.0, "first retry delay in seconds; doubles per attempt", flag=False
    )
    collector_max_backoff: float = _opt(
        14400.0,
        "cap on retry backoff, in seconds (with the defaults, collector_max_attempts span a day)",
        flag=False,
    )
    collector_fetch_timeout: float = _opt(60.0, "seconds per steps/messages fetch", flag=False)
    reported_usage_wait: float = _opt(
        600.0,
        "seconds a job whose run reported usage waits for its key before it is recorded "
        "without fetching steps",
        flag=False,
    )
    credential_ttl: float = _opt(
        86400.0, "seconds a key stays in memory after it was last seen", flag=False
    )
    mapping_poll_interval: float = _opt(
        1.0,
        "seconds between reads of the mapping version: a key or project mapping applies on "
        "every replica within this (plus one lookup)",
        flag=False,
    )
    # Hardening of credentials and collection (issue 20).
    credential_limit: int = _opt(
        10_000,
        "most keys held in memory; beyond it the least recently used is forgotten",
        flag=False,
    )
    collector_max_attempts: int = _opt(
        20,
        "failed attempts after which a run is recorded from itself alone (usage_source gave_up)",
        flag=False,
    )
    estimate_base_prompt: int = _est("system prompt of a run with no tools and no instructions")
    estimate_per_user_message: int = _est("prompt overhead of a user message")
    estimate_per_assistant_message: int = _est("prompt overhead of an assistant message")
    estimate_answer_completion: int = _est("completion overhead of an answer")
    estimate_code_interpreter_tool: int = _est("system prompt the code interpreter tool adds")
    estimate_code_interpreter_file: int = _est(
        "system prompt per file listed to code interpreter, beside its path"
    )
    estimate_file_search_tool: int = _est("system prompt the file search tool adds")
    estimate_function_tool: int = _est("system prompt function calling adds")
    estimate_per_function_definition: int = _est(
        "overhead per function definition, beside its rendering"
    )
    estimate_code_interpreter_prompt: int = _est("prompt overhead of a code interpreter call")
    estimate_code_interpreter_completion: int = _est(
        "completion overhead of a code interpreter call"
    )
    estimate_per_code_interpreter_output: int = _est("prompt overhead per code interpreter output")
    estimate_function_call_prompt: int = _est("prompt overhead of a function call")
    estimate_function_call_completion: int = _est("completion overhead of a function call")
    estimate_file_search_prompt: int = _est("prompt overhead of a file search call and its query")
    estimate_file_search_completion: int = _est(
        "completion tokens of a file search call (its query is unseen)"
    )
    estimate_per_file_search_result: int = _est("prompt overhead per file search result")
    estimate_image_tiles: int = _est("512-pixel tiles of an image whose size is unknown")
    estimate_families: str = _opt(
        "",
        "per-family constants as JSON, {family: {name: value}}; in the file, [estimate.FAMILY]",
        flag=False,
    )
    billing_url: str = _opt(
        "https://api.openai.com",
        "the OpenAI admin API that `billing pull` reads billed costs from",
        flag=False,
    )
    billing_pull_interval: float = _opt(
        0.0,
        "seconds between billing pulls of the last 3 days by `serve` (0: never); needs "
        "OPENAI_ADMIN_KEY in the environment",
        flag=False,
    )
    # Budgets and alerts (proxy/budgets, README "Budgets").
    budget_refresh_interval: float = _opt(
        0.5,
        "seconds between reads of the budgets and their spend: enforcement and budget changes "
        "apply on every replica within this (and sooner after this replica records usage)",
        flag=False,
    )
    budget_strict_timeout: float = _opt(
        0.5,
        "strict mode: seconds a request of a subject near an enforced budget's limit waits for "
        "a fresh read of the spend before it is judged on the last refresh instead (fail "
        "open); 0: strict mode off, requests are judged on the last refresh only",
        flag=False,
    )
    alert_webhook_url: str = _opt(
        "",
        "where budget alerts are posted as JSON (Slack and Teams incoming webhooks show its "
        "`text`); unset: alerts are kept in the database only",
        secret=True,
        flag=False,
    )
    alert_webhook_secret: str = _opt(
        "",
        "HMAC-SHA256 key of the alerts' X-Usage-Proxy-Signature header",
        secret=True,
        flag=False,
    )
    alert_retry_base: float = _opt(
        5.0, "first retry delay of a failed alert delivery, in seconds; doubles", flag=False
    )
    config: str = _opt("", "TOML config file")

    def __post_init__(self) -> None:
        _validate(self)

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            if f.metadata.get("secret"):
                continue
            value = getattr(self, f.name)
            masked = f.name in ("database_url", "upstream_proxy")
            shown.append(f"{f.name}={mask_url(value) if masked else value!r}")
        return f"Settings({', '.join(shown)})"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def estimate_constants(self) -> dict[str, int]:
        """The estimator's constants that are set, keyed as in the [estimate] table without its
        prefix (the rest come from the fitted table)."""
        return {
            f.name.removeprefix("estimate_"): getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name.startswith("estimate_") and f.type == "int" and getattr(self, f.name) != -1
        }

    def estimate_family_constants(self) -> dict[str, dict[str, Any]]:
        """The per-family tables of ``estimate_families`` (validated by __post_init__)."""
        return families(self.estimate_families)


@dataclass(frozen=True)
class Option:
    name: str
    type: type
    default: Any
    help: str
    secret: bool
    flag: bool

    @property
    def env(self) -> str:
        return "USAGE_PROXY_" + self.name.upper()


_TYPES = {"str": str, "int": int, "float": float, "bool": bool}

OPTIONS: tuple[Option, ...] = tuple(
    Option(
        f.name,
        _TYPES[f.type],
        f.default,
        f.metadata["help"],
        f.metadata["secret"],
        f.metadata["flag"],
    )
    for f in dataclasses.fields(Settings)
    if f.name != "config"
)
_BY_NAME = {o.name: o for o in OPTIONS}


def _validate(s: Settings) -> None:
    if not 1 <= s.port <= 65535:
        raise ConfigError(f"port: {s.port} is out of range (1-65535)")
    parts = urlsplit(s.upstream)
    shown = repr(USERINFO.sub("//***@", s.upstream, count=1))  # no part of user:password
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
    billing = urlsplit(s.billing_url)
    if billing.scheme not in ("http", "https") or not billing.hostname:
        raise ConfigError(f"billing_url: {s.billing_url!r} is not an http(s) URL with a host")
    hook = urlsplit(s.alert_webhook_url)
    if s.alert_webhook_url and (hook.scheme not in ("http", "https") or not hook.hostname):
        # Not echoed: a Slack or Teams webhook URL is itself a credential.
        raise ConfigError("alert_webhook_url: the value is not an http(s) URL with a host")
    if s.upstream_proxy:
        check_proxy_url(s.upstream_proxy, "upstream_proxy")
    if s.upstream_ca_file:
        load_ca_file(s.upstream_ca_file, ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if "://" not in s.database_url:
        # Shown only when it cannot hold credentials (user:password@host).
        shown = "the value" if "@" in s.database_url else repr(s.database_url)
        raise ConfigError(f"database_url: {shown} is not a URL (expected scheme://...)")
    if s.log_format not in ("text", "json"):
        raise ConfigError(f"log_format: {s.log_format!r} must be text or json")
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"log_level: {s.log_level!r} is not a level")
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
        if getattr(s, name) <= 0:
            raise ConfigError(f"{name}: {getattr(s, name)!r} must be > 0")
    for name in (
        "max_observed_body",
        "max_observed_request",
        "upstream_limit",
        "reported_usage_wait",
        "collector_max_backoff",
        "credential_ttl",
        "billing_pull_interval",
        "budget_strict_timeout",
    ):
        if getattr(s, name) < 0:
            raise ConfigError(f"{name}: {getattr(s, name)!r} must be >= 0")
    for name in ("client_max_header_bytes", "client_max_connections"):
        if getattr(s, name) < 1:
            raise ConfigError(f"{name}: {getattr(s, name)!r} must be >= 1")
    if s.collector_workers < 1:
        raise ConfigError(f"collector_workers: {s.collector_workers!r} must be >= 1")
    for name in ("credential_limit", "collector_max_attempts"):  # issue 20
        if getattr(s, name) < 1:
            raise ConfigError(f"{name}: {getattr(s, name)!r} must be >= 1")
    for name, value in s.estimate_constants().items():
        if value < 0:
            raise ConfigError(f"estimate_{name}: {value!r} must be >= 0 (or -1: the fitted table)")
    families(s.estimate_families)


def _coerce(name: str, value: Any, source: str) -> Any:
    opt = _BY_NAME[name]
    return coerce(name, opt.type, value, source, secret=opt.secret)


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config: file {path!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path!r} is not valid TOML: {exc}") from None
    estimate = raw.get("estimate")
    if isinstance(estimate, dict):
        # [estimate.FAMILY] tables are per-family constants, not settings of their own.
        families = {k: v for k, v in estimate.items() if isinstance(v, dict)}
        raw = {**raw, "estimate": {k: v for k, v in estimate.items() if k not in families}}
        if families:
            raw["estimate"]["families"] = json.dumps(families, sort_keys=True)
    values = flatten(raw)
    for key in values:
        if key not in _BY_NAME:
            raise ConfigError(f"config: unknown key {key!r} in {path!r}")
    return {k: _coerce(k, v, path) for k, v in values.items()}


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults, the config file, the environment and flags (None flags are unset)."""
    env = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    config_path = flags.get("config") or env.get("USAGE_PROXY_CONFIG") or ""
    values: dict[str, Any] = _read_file(config_path) if config_path else {}
    for opt in OPTIONS:
        if opt.env in env:
            values[opt.name] = _coerce(opt.name, env[opt.env], f"${opt.env}")
    for name, value in flags.items():
        if name == "config":
            continue
        if name not in _BY_NAME:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = _coerce(name, value, f"--{name.replace('_', '-')}")
    return Settings(**values, config=config_path)
