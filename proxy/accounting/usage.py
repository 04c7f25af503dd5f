"""The domain's usage row: what one billable event cost, and who pays. Built by the pure row
builders of each source, recorded by proxy.db.usage (exactly once)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from proxy.db.mappings import UNASSIGNED

__all__ = ["UNASSIGNED", "UsageRow", "row_from", "row_template"]


# Not frozen: a frozen dataclass of 29 fields costs ~8x as much to build (object.__setattr__
# per field), and a row is built for every recorded request (bench/README.md). Rows are values
# all the same: nothing changes one after it is built (dataclasses.replace makes a new one).
# Not slots either: `row_from` builds a row from a dict.
@dataclass(kw_only=True)
class UsageRow:
    """The content of one usage_records row (see proxy.db.models.UsageRecord;
    proxy.db.usage.USAGE_FIELDS are its fields)."""

    kind: str
    object_id: str
    occurred_at: dt.datetime
    usage_source: str
    thread_id: str | None = None
    assistant_id: str | None = None
    conversation_id: str | None = None
    prompt_id: str | None = None
    model: str | None = None
    status: str | None = None
    key_fingerprint: str | None = None
    key_hint: str | None = None
    team: str = UNASSIGNED
    tag: str | None = None
    project: str | None = None
    organization: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    estimated_prompt_tokens: int | None = None
    estimated_completion_tokens: int | None = None
    code_interpreter_calls: int = 0
    code_interpreter_sessions: int = 0
    file_search_calls: int = 0
    web_search_calls: int = 0
    function_calls: int = 0
    cost_usd: Decimal = Decimal(0)


_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(UsageRow) if f.default is not dataclasses.MISSING
}
_new = object.__new__


def row_template(**values: Any) -> dict[str, Any]:
    """Every field of a UsageRow: its defaults updated with `values`. For `row_from`."""
    return _DEFAULTS | values


def row_from(values: dict[str, Any]) -> UsageRow:
    """The UsageRow of `values`, a copy of a `row_template` with the row's own values set; the
    row takes the dict over. About a third of what `UsageRow(...)` with keywords costs, for the
    row built per request. The fields are not checked: the template holds them all."""
    row = _new(UsageRow)
    row.__dict__ = values
    return row
