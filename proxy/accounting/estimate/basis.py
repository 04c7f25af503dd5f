"""A token count that is linear in the estimator's constants: ``offset + sum(n_c * constant_c)``.

Every part of a run's estimate is one of these: the tokens the estimator can count itself (the
offset) plus so many of each fitted overhead (the counts). Evaluating a basis with a table of
constants gives the estimate; fitting constants to reported usage is a linear regression on the
same bases. So the collector, ``usage-proxy estimate`` and ``usage-proxy calibrate`` share one
piece of code and cannot drift apart. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Basis"]


@dataclass(frozen=True)
class Basis:
    """``offset`` tokens counted directly, plus ``counts[name]`` times the constant ``name``."""

    offset: int = 0
    counts: Mapping[str, int] = field(default_factory=dict)

    def __add__(self, other: Basis) -> Basis:
        if not other.counts:
            return Basis(self.offset + other.offset, self.counts)
        counts = dict(self.counts)
        for name, n in other.counts.items():
            counts[name] = counts.get(name, 0) + n
        return Basis(self.offset + other.offset, counts)

    def __sub__(self, other: Basis) -> Basis:
        counts = dict(self.counts)
        for name, n in other.counts.items():
            counts[name] = counts.get(name, 0) - n
        return Basis(self.offset - other.offset, {k: v for k, v in counts.items() if v})

    @classmethod
    def of(cls, offset: int = 0, **counts: int) -> Basis:
        return cls(offset, {k: v for k, v in counts.items() if v})

    def value(self, constants: Mapping[str, int]) -> int:
        """The tokens with these constants (a missing name counts 0); never below zero."""
        return max(0, self.offset + sum(n * constants.get(k, 0) for k, n in self.counts.items()))

    def to_json(self) -> dict[str, Any]:
        return {"offset": self.offset, "counts": dict(sorted(self.counts.items()))}

    @classmethod
    def from_json(cls, value: object) -> Basis:
        """Read :meth:`to_json`'s form; ValueError when it is not that form."""
        if not isinstance(value, Mapping):
            raise ValueError("a basis is an object with offset and counts")
        offset, counts = value.get("offset"), value.get("counts")
        if not _is_int(offset) or not isinstance(counts, Mapping):
            raise ValueError("a basis needs an integer offset and a counts object")
        if not all(isinstance(k, str) and _is_int(n) for k, n in counts.items()):
            raise ValueError("a basis's counts map names to integers")
        return cls(offset, dict(counts))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
