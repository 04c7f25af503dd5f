"""ReportQuery: what a usage report asks for, parsed and checked the same way for the CLI
(`usage-proxy report`) and for HTTP (`GET /_proxy/usage`). Pure: nothing here touches the
database.

Time bounds: `since` inclusive, `until` exclusive; an ISO date is midnight UTC and a datetime
without a zone is UTC; a month (YYYY-MM) is one UTC month. Group fields are those of
proxy.db.queries.GROUP_FIELDS; filters are team, kind and model, each an exact match.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.accounting.sources.events.containers import CONTAINER_KIND
from proxy.accounting.sources.events.rows import CHAT_KIND, EMBEDDING_KIND, RESPONSE_KIND
from proxy.accounting.usage import ASSISTANTS_RUN
from proxy.db.billing import ADJUSTMENT
from proxy.db.queries import GROUP_FIELDS as _COLUMNS
from proxy.reports.render import FORMATS

__all__ = [
    "FILTERS",
    "GROUP_FIELDS",
    "HTTP_FORMATS",
    "KINDS",
    "PARAMS",
    "REPORT_FORMATS",
    "ReportError",
    "ReportQuery",
    "parse_group_by",
    "parse_kind",
    "parse_month",
    "parse_when",
]

GROUP_FIELDS: tuple[str, ...] = tuple(_COLUMNS)
FILTERS = ("team", "kind", "model")
# Every kind a usage row has: `--kind` takes one of these, so a typo is an error, not an
# empty report.
KINDS = (ASSISTANTS_RUN, RESPONSE_KIND, CHAT_KIND, EMBEDDING_KIND, CONTAINER_KIND, ADJUSTMENT)
_MONTH = re.compile(r"\d{4}-\d{2}")
# Every format of a report: render's, and FOCUS 1.2 CSV (proxy.reports.focus).
REPORT_FORMATS = (*FORMATS, "focus")
# A report over HTTP is data for a program, so no text table there.
HTTP_FORMATS = ("json", "csv", "focus")
PARAMS = frozenset({"since", "until", "month", "group_by", "format", *FILTERS})


class ReportError(ValueError):
    """A report parameter is wrong; `param` names it as its caller spells it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def parse_when(text: str) -> dt.datetime:
    """An ISO date (midnight UTC) or datetime; naive means UTC. Raises ValueError."""
    try:
        if len(text) == 10:
            value = dt.datetime.combine(dt.date.fromisoformat(text), dt.time())
        else:
            value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO date or datetime") from None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def parse_month(text: str) -> tuple[dt.datetime, dt.datetime]:
    """A UTC month, YYYY-MM (two-digit month), as (its first instant, the next month's).
    Raises ValueError."""
    if not _MONTH.fullmatch(text):
        raise ValueError(f"{text!r} is not a month (YYYY-MM)")
    try:
        start = dt.datetime.strptime(text, "%Y-%m").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ValueError(f"{text!r} is not a month (YYYY-MM)") from None
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return start, end


def parse_kind(text: str) -> str:
    """One of KINDS. Raises ValueError."""
    if text not in KINDS:
        raise ValueError(f"unknown kind {text!r} (one of {', '.join(KINDS)})")
    return text


def parse_group_by(text: str) -> list[str]:
    """A comma list of report group-by fields. Raises ValueError."""
    fields = [f.strip() for f in text.split(",") if f.strip()]
    for name in fields:
        if name not in GROUP_FIELDS:
            raise ValueError(f"unknown field {name!r} (choose from {', '.join(GROUP_FIELDS)})")
    if not fields:
        raise ValueError("no fields given")
    return fields


@dataclass(frozen=True)
class ReportQuery:
    """One report: every event in [since, until), or totals per group when `group_by` is set;
    `filters` maps each of FILTERS to a value or None; `fmt` is one of REPORT_FORMATS."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    group_by: tuple[str, ...] = ()
    filters: Mapping[str, str | None] = field(default_factory=lambda: dict.fromkeys(FILTERS))
    fmt: str = "table"

    @classmethod
    def from_args(
        cls,
        *,
        since: dt.datetime | None,
        until: dt.datetime | None,
        month: tuple[dt.datetime, dt.datetime] | None,
        group_by: Sequence[str] | None,
        filters: Mapping[str, str | None],
        fmt: str,
    ) -> ReportQuery:
        """The query of already parsed command-line options; raises ReportError naming the
        offending option as a flag (`--month`)."""
        since, until = _bounds(since, until, month, lambda name: f"--{name}")
        return cls(since, until, tuple(group_by or ()), _filters(filters), fmt)

    @classmethod
    def from_params(cls, params: Mapping[str, str], *, default_format: str = "json") -> ReportQuery:
        """The query of an HTTP request's parameters (a multidict: each may appear once).
        Raises ReportError naming the first offending parameter."""
        getall = getattr(params, "getall", None)
        for name in params:
            if name not in PARAMS:
                raise ReportError(
                    name, f"unknown parameter {name!r} (one of {', '.join(sorted(PARAMS))})"
                )
            if getall is not None and len(getall(name)) > 1:
                raise ReportError(name, f"parameter {name!r} is given more than once")

        def parsed(name: str, parse: Callable[[str], Any]) -> Any:
            if name not in params:
                return None
            try:
                return parse(params[name])
            except ValueError as exc:
                raise ReportError(name, f"{name}: {exc}") from None

        fmt = params.get("format", default_format)
        if fmt not in HTTP_FORMATS:
            raise ReportError("format", f"format: {fmt!r} is not one of {', '.join(HTTP_FORMATS)}")
        since, until = parsed("since", parse_when), parsed("until", parse_when)
        since, until = _bounds(since, until, parsed("month", parse_month), str)
        group_by = parsed("group_by", parse_group_by)
        filters = {name: params.get(name) for name in FILTERS}
        filters["kind"] = parsed("kind", parse_kind)
        return cls(since, until, tuple(group_by or ()), filters, fmt)


def _bounds(
    since: dt.datetime | None,
    until: dt.datetime | None,
    month: tuple[dt.datetime, dt.datetime] | None,
    spell: Callable[[str], str],
) -> tuple[dt.datetime | None, dt.datetime | None]:
    if month is not None:
        if since is not None or until is not None:
            raise ReportError(
                "month",
                f"{spell('month')} cannot be combined with {spell('since')} or {spell('until')}",
            )
        since, until = month
    if since is not None and until is not None and since >= until:
        raise ReportError("since", f"{spell('since')} must be before {spell('until')}")
    return since, until


def _filters(given: Mapping[str, str | None]) -> dict[str, str | None]:
    unknown = set(given) - set(FILTERS)
    if unknown:
        raise ValueError(f"unknown filter {sorted(unknown)[0]!r} (one of {', '.join(FILTERS)})")
    kind = given.get("kind")
    if kind is not None:
        try:
            parse_kind(kind)
        except ValueError as exc:
            raise ReportError("kind", f"--kind: {exc}") from None
    return {name: given.get(name) for name in FILTERS}
