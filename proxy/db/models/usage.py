"""Usage: one row per billable event, and the day and month rollups kept beside them."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from proxy.db.models.base import Base, utcnow

__all__ = ["UsageRecord", "UsageRollup", "UsageRollupMonth"]


class UsageRecord(Base):
    """One billable event: an Assistants run, a response, a chat completion or an embedding.

    (kind, object_id) is unique: inserts are "insert or do nothing", so the database decides
    that an event is counted once.
    """

    __tablename__ = "usage_records"
    __table_args__ = (
        UniqueConstraint("kind", "object_id", name="uq_usage_records_kind_object_id"),
        Index("ix_usage_records_occurred_at", "occurred_at"),
        Index("ix_usage_records_team_occurred_at", "team", "occurred_at"),
        Index("ix_usage_records_assistant_id", "assistant_id"),
        Index("ix_usage_records_model", "model"),
        Index("ix_usage_records_key_fingerprint", "key_fingerprint"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(255))
    thread_id: Mapped[str | None] = mapped_column(String(255))
    assistant_id: Mapped[str | None] = mapped_column(String(255))
    conversation_id: Mapped[str | None] = mapped_column(String(255))
    prompt_id: Mapped[str | None] = mapped_column(String(255))
    model: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str | None] = mapped_column(String(32))
    occurred_at: Mapped[dt.datetime]
    recorded_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    key_fingerprint: Mapped[str | None] = mapped_column(String(64))
    key_hint: Mapped[str | None] = mapped_column(String(32))
    team: Mapped[str] = mapped_column(String(128), default="unassigned")
    tag: Mapped[str | None] = mapped_column(String(128))
    project: Mapped[str | None] = mapped_column(String(255))
    organization: Mapped[str | None] = mapped_column(String(255))
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    total_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    # "reported", "estimated", "estimated_partial" (from part of an oversized request), "none"
    usage_source: Mapped[str] = mapped_column(String(32))
    estimated_prompt_tokens: Mapped[int | None] = mapped_column(BigInteger)
    estimated_completion_tokens: Mapped[int | None] = mapped_column(BigInteger)
    # Which estimator and constants made the estimate (e.g. "runs2-1a2b3c4d"), and its bases
    # as JSON, from which calibration can refit the constants.
    estimator: Mapped[str | None] = mapped_column(String(32))
    estimate_basis: Mapped[str | None] = mapped_column(Text)
    code_interpreter_calls: Mapped[int] = mapped_column(Integer, default=0)
    code_interpreter_sessions: Mapped[int] = mapped_column(Integer, default=0)
    file_search_calls: Mapped[int] = mapped_column(Integer, default=0)
    # web_search (and web_search_preview on reasoning models, billed alike) ...
    web_search_calls: Mapped[int] = mapped_column(Integer, default=0)
    # ... and web_search_preview on non-reasoning models, at its own per-call rate.
    # A server default: inserts that name the columns of before 0012 still work.
    web_search_preview_calls: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    function_calls: Mapped[int] = mapped_column(Integer, default=0)
    # The Azure OpenAI deployment of an /openai/deployments/{name}/... request.
    deployment: Mapped[str | None] = mapped_column(String(255))
    # NULL: the model or a tool had no price in force when the row was recorded (unpriced).
    cost_usd: Mapped[Decimal | None] = mapped_column(default=Decimal(0))


class _RollupCell:
    """The columns of a rollup cell after its period, the same in the day and the month
    table: the dimensions ('' for NULL: part of the primary key) and the sums."""

    team: Mapped[str] = mapped_column(String(128), primary_key=True)
    key_fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_hint: Mapped[str] = mapped_column(String(32), primary_key=True)
    assistant_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    tag: Mapped[str] = mapped_column(String(128), primary_key=True)
    events: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    total_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger)
    code_interpreter_sessions: Mapped[int] = mapped_column(BigInteger)
    cost_usd: Mapped[Decimal]
    unpriced_events: Mapped[int] = mapped_column(BigInteger)
    unpriced_tokens: Mapped[int] = mapped_column(BigInteger)


class UsageRollup(_RollupCell, Base):
    """usage_records summed per UTC day, team, key, assistant, model, kind and tag, kept in the
    same transaction as every write of usage rows (proxy.db.rollup), so that reports and the
    dashboard read a month in cells instead of events. A NULL dimension is '' here: a unique
    key must compare NULLs as equal, and '' is what no real value of these columns is.
    cost_usd sums the priced events; unpriced_events and unpriced_tokens count the others."""

    __tablename__ = "usage_rollup"
    __table_args__ = (Index("ix_usage_rollup_team_day", "team", "day"),)

    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # YYYY-MM-DD, UTC


class UsageRollupMonth(_RollupCell, Base):
    """usage_rollup summed per UTC month (YYYY-MM): the same cells without the day, kept by the
    same writes. A month's overview reads its ~6,000 cells instead of ~84,000 daily ones."""

    __tablename__ = "usage_rollup_month"

    month: Mapped[str] = mapped_column(String(7), primary_key=True)
