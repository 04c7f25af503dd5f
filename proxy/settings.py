"""Settings: one declaration per option.

Precedence, highest first: command-line flag > environment variable (USAGE_PROXY_<NAME>) >
TOML config file (--config / USAGE_PROXY_CONFIG) > default. In the file, a table flattens into
its prefix: `[estimate] base_prompt = 105` is the setting `estimate_base_prompt`.

A bad value raises ConfigError naming the key and the value; secrets are never echoed.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from proxy.errors import ConfigError

__all__ = ["OPTIONS", "Option", "Settings", "load_settings", "mask_url"]


def _opt(default: Any, help: str, *, secret: bool = False, flag: bool = True) -> Any:
    return field(
        default=default, repr=not secret, metadata={"help": help, "secret": secret, "flag": flag}
    )


@dataclass(frozen=True)
class Settings:
    """Every setting, with its type, default and help: the one declaration of each option."""

    host: str = _opt("127.0.0.1", "address to listen on")
    port: int = _opt(8080, "port to listen on (1-65535)")
    upstream: str = _opt("https://api.openai.com", "the API server to forward to")
    database_url: str = _opt("sqlite+aiosqlite:///usage.db", "SQLAlchemy async database URL")
    upstream_timeout: float = _opt(600.0, "seconds to wait for the upstream's response headers")
    upstream_connect_timeout: float = _opt(30.0, "seconds to wait for a connection to the upstream")
    upstream_limit: int = _opt(
        0,
        "maximum upstream connections (0: unlimited); with a limit, every request goes through"
        " aiohttp's pool, ~40 us more CPU per request",
        flag=False,
    )
    max_observed_body: int = _opt(8 * 1024 * 1024, "bytes of a response body observers see")
    max_observed_request: int = _opt(4 * 1024 * 1024, "bytes of a request body observers see")
    # Client connections (proxy/guard.py): what a slow or half-open client may hold.
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
        "bearer token for /_proxy/usage and /_proxy/metrics (unset: both answer 404)",
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
    collector_lease: float = _opt(120.0, "seconds a claimed job stays claimed", flag=False)
    collector_retry_base: float = _opt(
        1.0, "first retry delay in seconds; doubles per attempt", flag=False
    )
    collector_max_backoff: float = _opt(300.0, "cap on retry backoff, in seconds", flag=False)
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
    estimate_base_prompt: int = _opt(105, "seed: base prompt tokens of a run", flag=False)
    estimate_per_user_message: int = _opt(4, "seed: overhead of a user message", flag=False)
    estimate_per_assistant_message: int = _opt(
        2, "seed: overhead of an assistant message", flag=False
    )
    estimate_code_interpreter_prompt: int = _opt(
        14, "seed: prompt overhead of a code interpreter call", flag=False
    )
    estimate_code_interpreter_completion: int = _opt(
        6, "seed: completion overhead of a code interpreter call", flag=False
    )
    estimate_per_code_interpreter_output: int = _opt(
        0, "extra prompt tokens per code interpreter output", flag=False
    )
    estimate_function_call_prompt: int = _opt(14, "prompt overhead of a function call", flag=False)
    estimate_function_call_completion: int = _opt(
        6, "completion overhead of a function call", flag=False
    )
    estimate_per_function_definition: int = _opt(
        0, "overhead per function definition, beside its JSON", flag=False
    )
    estimate_file_search_prompt: int = _opt(28, "prompt overhead of a file search call", flag=False)
    estimate_file_search_completion: int = _opt(
        20, "completion overhead of a file search call", flag=False
    )
    estimate_per_image: int = _opt(765, "tokens per image part or image output", flag=False)
    config: str = _opt("", "TOML config file")

    def __post_init__(self) -> None:
        _validate(self)

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            if f.metadata.get("secret"):
                continue
            value = getattr(self, f.name)
            shown.append(f"{f.name}={mask_url(value) if f.name == 'database_url' else value!r}")
        return f"Settings({', '.join(shown)})"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def estimate_constants(self) -> dict[str, int]:
        """The estimator's constants, keyed as in the [estimate] table without its prefix."""
        return {
            f.name.removeprefix("estimate_"): getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name.startswith("estimate_")
        }


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
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"upstream: {s.upstream!r} is not an http(s) URL with a host")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ConfigError(f"upstream: {s.upstream!r} has a bad port") from exc
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
    ):
        if getattr(s, name) < 0:
            raise ConfigError(f"{name}: {getattr(s, name)!r} must be >= 0")
    for name in ("client_max_header_bytes", "client_max_connections"):
        if getattr(s, name) < 1:
            raise ConfigError(f"{name}: {getattr(s, name)!r} must be >= 1")
    if s.collector_workers < 1:
        raise ConfigError(f"collector_workers: {s.collector_workers!r} must be >= 1")
    for name, value in s.estimate_constants().items():
        if value < 0:
            raise ConfigError(f"estimate_{name}: {value!r} must be >= 0")


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs and the start-up line."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _coerce(name: str, value: Any, source: str) -> Any:
    opt = _BY_NAME[name]
    shown = "***" if opt.secret else repr(value)
    try:
        if opt.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if opt.type is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if opt.type is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise ConfigError(
            f"{name}: {shown} from {source} is not a valid {opt.type.__name__}"
        ) from None


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "_"))
        else:
            out[name] = value
    return out


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config: file {path!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path!r} is not valid TOML: {exc}") from None
    values = _flatten(raw)
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
