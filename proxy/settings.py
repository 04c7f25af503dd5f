"""Settings: one declaration per option.

Precedence, highest first: command-line flag > environment variable (USAGE_PROXY_<NAME>) >
TOML config file (--config / USAGE_PROXY_CONFIG) > default. In the file, a table flattens into
its prefix: `[estimate] base_prompt = 105` is the setting `estimate_base_prompt`.

A bad value raises ConfigError naming the key and the value; secrets are never echoed.

This module declares the settings; proxy.config_load reads them from the file, the
environment and flags, and proxy.settings_checks holds the checks a Settings passes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.config_load import Option, load, options_of
from proxy.config_values import families, mask_url
from proxy.settings_checks import check

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
        "seconds at most an answer waits for accounting to store what it showed (a run"
        " create's job; the usage row of a subject near an enforced budget's limit), and a"
        " run create for its intent; then it goes anyway",
        flag=False,
    )
    unseen_after: float = _opt(
        900.0,
        "seconds after which a create-and-run whose replica died before its answer was seen,"
        " and whose run no replica saw since, is counted unseen (maybe unrecorded; Assistants"
        " runs expire 10 minutes after creation)",
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
        check(vars(self), self.estimate_constants())

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


OPTIONS: tuple[Option, ...] = options_of(Settings)


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults, the config file, the environment and flags (None flags are unset)."""
    return load(Settings, OPTIONS, flags, environ)
