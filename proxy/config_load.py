"""Reading a settings declaration's values from a TOML file, the environment and flags.

The declaration is a frozen dataclass whose fields carry `help`, `secret` and `flag` in their
metadata (proxy.settings.Settings); `options_of` describes its fields, `load` builds one.
Precedence, highest first: flag > environment variable (USAGE_PROXY_<NAME>) > TOML file >
default. In the file, a table flattens into its prefix: `[estimate] base_prompt = 105` is the
option `estimate_base_prompt`, and `[estimate.FAMILY]` tables are kept, as JSON, in
`estimate_families`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from proxy.config_values import coerce, flatten
from proxy.errors import ConfigError

__all__ = ["Option", "load", "options_of"]

T = TypeVar("T")
_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


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


def options_of(declaration: type) -> tuple[Option, ...]:
    """The options of a settings dataclass, in declaration order, less `config` (the file
    itself, which is no option of its own)."""
    return tuple(
        Option(
            f.name,
            _TYPES[f.type],
            f.default,
            f.metadata["help"],
            f.metadata["secret"],
            f.metadata["flag"],
        )
        for f in dataclasses.fields(declaration)
        if f.name != "config"
    )


def load(
    make: Callable[..., T],
    options: tuple[Option, ...],
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> T:
    """`make(**values, config=path)` with the values of `options` set in the config file, the
    environment and `flags` (None flags are unset)."""
    by_name = {o.name: o for o in options}
    env = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    config_path = flags.get("config") or env.get("USAGE_PROXY_CONFIG") or ""
    values: dict[str, Any] = _read_file(config_path, by_name) if config_path else {}
    for opt in options:
        if opt.env in env:
            values[opt.name] = _coerce(by_name, opt.name, env[opt.env], f"${opt.env}")
    for name, value in flags.items():
        if name == "config":
            continue
        if name not in by_name:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = _coerce(by_name, name, value, f"--{name.replace('_', '-')}")
    return make(**values, config=config_path)


def _coerce(by_name: Mapping[str, Option], name: str, value: Any, source: str) -> Any:
    opt = by_name[name]
    return coerce(name, opt.type, value, source, secret=opt.secret)


def _read_file(path: str, by_name: Mapping[str, Option]) -> dict[str, Any]:
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
        if key not in by_name:
            raise ConfigError(f"config: unknown key {key!r} in {path!r}")
    return {k: _coerce(by_name, k, v, path) for k, v in values.items()}
