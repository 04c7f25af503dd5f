"""Where settings come from. Precedence, highest first: command-line flag > environment
variable (USAGE_PROXY_<NAME>) > TOML config file (--config / USAGE_PROXY_CONFIG) > default. In
the file, a table flattens into its prefix: `[estimate] base_prompt = 105` is the setting
`estimate_base_prompt`.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from typing import Any

from proxy.errors import ConfigError
from proxy.settings.options import BY_NAME, OPTIONS, Settings

__all__ = ["load_settings"]


def _coerce(name: str, value: Any, source: str) -> Any:
    opt = BY_NAME[name]
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
    estimate = raw.get("estimate")
    if isinstance(estimate, dict):
        # [estimate.FAMILY] tables are per-family constants, not settings of their own.
        families = {k: v for k, v in estimate.items() if isinstance(v, dict)}
        raw = {**raw, "estimate": {k: v for k, v in estimate.items() if k not in families}}
        if families:
            raw["estimate"]["families"] = json.dumps(families, sort_keys=True)
    values = _flatten(raw)
    for key in values:
        if key not in BY_NAME:
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
        if name not in BY_NAME:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = _coerce(name, value, f"--{name.replace('_', '-')}")
    return Settings(**values, config=config_path)
