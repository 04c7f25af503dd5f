"""Which provider key a recorded row was made with. Pure.

The proxy never sees the provider's key ids: it knows a key's hint (`sk-...abcd`) and the
project it was used with; the admin API gives each key id's project and redacted value. They
match on the project plus the visible tail. Two keys of one project with the same tail cannot
be told apart: their group is ambiguous, never guessed. A row recorded without a project is
matched on the tail alone, when exactly one project has a key with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.reconcile.billed import tail_of

__all__ = ["KeyIndex", "KeyMatch", "Resolved"]


class _Key(Protocol):
    api_key_id: str
    project: str
    name: str | None
    redacted_value: str | None


@dataclass(frozen=True)
class Resolved:
    """The project and key of a billed or recorded row, as far as they are known."""

    project: str | None
    key_hint: str | None
    ambiguous: bool = False


@dataclass(frozen=True)
class KeyMatch:
    status: str  # matched | ambiguous | unseen (billed, never through the proxy) | unknown
    project: str | None
    key_hint: str | None
    api_key_ids: tuple[str, ...]
    names: tuple[str, ...]


def _hint(tail: str | None) -> str | None:
    return f"sk-...{tail}" if tail else None


class KeyIndex:
    def __init__(self, keys: Iterable[_Key]) -> None:
        self._keys = {k.api_key_id: k for k in keys}
        self._by_tail: dict[tuple[str, str | None], list[str]] = {}
        self._projects_of_tail: dict[str, set[str]] = {}
        for k in self._keys.values():
            tail = tail_of(k.redacted_value)
            self._by_tail.setdefault((k.project, tail), []).append(k.api_key_id)
            if tail:
                self._projects_of_tail.setdefault(tail, set()).add(k.project)

    def billed(self, project: str, api_key_id: str) -> Resolved:
        """A billed row's project and key hint (None: no key, or a key the admin API did not
        list)."""
        key = self._keys.get(api_key_id)
        if key is None:
            return Resolved(project or None, None)
        tail = tail_of(key.redacted_value)
        ambiguous = tail is None or len(self._by_tail[(key.project, tail)]) > 1
        return Resolved(project or key.project, _hint(tail), ambiguous and tail is not None)

    def recorded(self, project: str | None, key_hint: str | None) -> Resolved:
        """A recorded row's project (inferred from the tail when the row has none) and hint."""
        tail = tail_of(key_hint)
        if tail is None:
            return Resolved(project, None)
        if project is None:
            projects = self._projects_of_tail.get(tail, set())
            if len(projects) != 1:
                return Resolved(None, _hint(tail))
            project = next(iter(projects))
        ids = self._by_tail.get((project, tail), [])
        return Resolved(project, _hint(tail), len(ids) > 1)

    def matches(self, seen: Iterable[tuple[str | None, str | None]]) -> list[KeyMatch]:
        """Every provider key (matched, ambiguous or unseen) and every key the proxy saw that
        the provider did not list (unknown)."""
        seen_pairs = {self.recorded(p, h) for p, h in seen}
        seen_keys = {(r.project, r.key_hint) for r in seen_pairs}
        out = []
        for (project, tail), ids in sorted(self._by_tail.items(), key=_order):
            hint = _hint(tail)
            names = tuple(self._keys[i].name or "" for i in ids)
            if tail is not None and len(ids) > 1:
                status = "ambiguous"
            elif (project, hint) in seen_keys:
                status = "matched"
            else:
                status = "unseen"
            out.append(KeyMatch(status, project, hint, tuple(ids), names))
        known = {(p, _hint(t)) for p, t in self._by_tail}
        for project, hint in sorted(seen_keys - known, key=_order):
            if hint is not None:
                out.append(KeyMatch("unknown", project, hint, (), ()))
        return out


def _order(item: Any) -> tuple[str, str]:
    key = item[0] if isinstance(item[0], tuple) else item
    return (key[0] or "", key[1] or "")
