"""Who a request is billed to: key fingerprint and hint, team, tag, project, organization."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Attribution"]

_MAX_LABEL = 128


@dataclass(frozen=True, slots=True)
class Attribution:
    key_fingerprint: str | None
    key_hint: str | None
    team: str | None  # None: not known yet (database down); resolved when written
    tag: str | None
    project: str | None
    organization: str | None

    def columns(self) -> dict[str, str | None]:
        """The attribution as the usage row's and the job's column values."""
        return {
            "key_fingerprint": self.key_fingerprint,
            "key_hint": self.key_hint,
            "team": self.team,
            "tag": self.tag,
            "project": self.project,
            "organization": self.organization,
        }

    @staticmethod
    def header(headers: Mapping[str, str], name: str) -> str | None:
        """A short, printable header value, or None (labels must fit their columns)."""
        value = headers.get(name)
        if value is None:
            return None
        value = "".join(ch for ch in value.strip() if ch.isprintable())[:_MAX_LABEL]
        return value or None
