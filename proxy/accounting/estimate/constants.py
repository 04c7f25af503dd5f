"""The estimator's constants: a fitted table shipped in the package, and overrides from settings.

A run's tokens are the ones the estimator counts itself plus a few fixed overheads (see
``runs.py``). The overheads depend on the model family, which follows the tokenizer
generation: ``gpt-4o`` (o200k_base: gpt-4o, gpt-4o-mini, gpt-4.1, o-series) and ``gpt-4``
(cl100k_base: gpt-4, gpt-4-turbo, gpt-3.5-turbo). The shipped table
(``proxy/data/estimate_constants.toml``) has one shared set and, per family, only the values the
recorded runs show to differ.

Precedence, highest first: a family table in the settings (``[estimate.gpt-4o]``), a flat
``[estimate]`` setting, the shipped family table, the shipped shared set. Every row an estimate
produced names the :attr:`ConstantsTable.version` it was made with, so a change of constants
shows in reports.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from proxy.accounting.estimate.tokenizer import encoding_name_for_model
from proxy.errors import ConfigError
from proxy.settings import Settings

__all__ = [
    "CONSTANT_NAMES",
    "ESTIMATOR",
    "FAMILIES",
    "ConstantsTable",
    "family_for_model",
    "load_shipped_table",
    "table_from_settings",
    "table_from_toml",
]

# Bumped when the way runs are modelled changes, not when constants do (the version's hash
# covers those).
ESTIMATOR = "runs2"

CONSTANT_NAMES: tuple[str, ...] = (
    "base_prompt",
    "per_user_message",
    "per_assistant_message",
    "answer_completion",
    "code_interpreter_tool",
    "code_interpreter_file",
    "file_search_tool",
    "function_tool",
    "per_function_definition",
    "code_interpreter_prompt",
    "code_interpreter_completion",
    "per_code_interpreter_output",
    "function_call_prompt",
    "function_call_completion",
    "file_search_prompt",
    "file_search_completion",
    "per_file_search_result",
    "image_tiles",
)

FAMILIES: dict[str, str] = {"o200k_base": "gpt-4o", "cl100k_base": "gpt-4"}

_SHIPPED = "estimate_constants.toml"


def family_for_model(model: str | None) -> str:
    """The family whose constants estimate ``model``'s runs (by its tokenizer generation)."""
    return FAMILIES.get(encoding_name_for_model(model), "gpt-4o")


def check_constants(values: Mapping[str, object], where: str) -> dict[str, int]:
    """``values`` as constants; ValueError naming ``where`` and the key when one is wrong."""
    out: dict[str, int] = {}
    for key, value in values.items():
        if key not in CONSTANT_NAMES:
            raise ValueError(f"{where}: unknown estimate constant {key!r}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{where}: {key} must be a whole number >= 0, got {value!r}")
        out[key] = value
    return out


@dataclass(frozen=True)
class ConstantsTable:
    """Shared constants and per-family overrides; :meth:`for_model` resolves one family's."""

    shared: Mapping[str, int]
    families: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [n for n in CONSTANT_NAMES if n not in self.shared]
        if missing:
            raise ValueError(f"estimate constants: the shared set lacks {missing}")
        check_constants(self.shared, "estimate constants")
        for family, values in self.families.items():
            check_constants(values, f"estimate constants for {family}")

    def for_family(self, family: str) -> dict[str, int]:
        return {**self.shared, **self.families.get(family, {})}

    def for_model(self, model: str | None) -> dict[str, int]:
        return self.for_family(family_for_model(model))

    def overridden(
        self, flat: Mapping[str, int], families: Mapping[str, Mapping[str, int]]
    ) -> ConstantsTable:
        """This table with settings on top: ``flat`` beats every shipped value, ``families``
        beat ``flat`` for their family."""
        merged = {
            f: {k: v for k, v in vals.items() if k not in flat} for f, vals in self.families.items()
        }
        for family, values in families.items():
            merged[family] = {**merged.get(family, {}), **values}
        return ConstantsTable({**self.shared, **flat}, {f: v for f, v in merged.items() if v})

    @property
    def version(self) -> str:
        """A short id of the estimator and these exact constants, e.g. ``runs2-1a2b3c4d``."""
        canonical = json.dumps(
            {
                "shared": dict(self.shared),
                "families": {k: dict(v) for k, v in self.families.items()},
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return f"{ESTIMATOR}-{hashlib.sha256(canonical.encode()).hexdigest()[:8]}"

    def to_toml_tables(self) -> dict[str, Any]:
        return {"estimate": {**self.shared, **{f: dict(v) for f, v in self.families.items()}}}


def table_from_toml(data: Mapping[str, Any], where: str) -> ConstantsTable:
    """Read ``{"estimate": {shared keys..., "<family>": {...}}}``; ValueError when malformed."""
    estimate = data.get("estimate")
    if not isinstance(estimate, Mapping):
        raise ValueError(f"{where}: no [estimate] table")
    shared = {k: v for k, v in estimate.items() if not isinstance(v, Mapping)}
    families = {
        k: check_constants(v, f"{where} [estimate.{k}]")
        for k, v in estimate.items()
        if isinstance(v, Mapping)
    }
    return ConstantsTable(check_constants(shared, where), families)


def load_shipped_table() -> ConstantsTable:
    """The fitted table shipped in the package."""
    text = resources.files("proxy").joinpath("data").joinpath(_SHIPPED).read_text()
    return table_from_toml(tomllib.loads(text), _SHIPPED)


def table_from_settings(
    settings: Settings, shipped: ConstantsTable | None = None
) -> ConstantsTable:
    """The shipped table with the settings' ``[estimate]`` values on top; ConfigError names a
    bad key."""
    base = load_shipped_table() if shipped is None else shipped
    try:
        flat = check_constants(settings.estimate_constants(), "estimate")
        families = {
            f: check_constants(v, f"estimate.{f}")
            for f, v in settings.estimate_family_constants().items()
        }
        return base.overridden(flat, families)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
