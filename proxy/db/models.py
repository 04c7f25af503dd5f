"""Tables. Datetimes are timezone-aware UTC; money is Numeric and Decimal.

Changing a model means a new Alembic revision (autogenerate, then review); `alembic check`
runs in the tests so the two cannot drift.
"""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import (
    BigInteger,
    DateTime,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Alert",
    "AssistantName",
    "AuditEntry",
    "Base",
    "BilledCost",
    "BillingKey",
    "BillingLease",
    "Budget",
    "CodeInterpreterCall",
    "CollectionJob",
    "KeyTeam",
    "MappingVersion",
    "Money",
    "ProjectTeam",
    "ProxySecret",
    "Reconciliation",
    "ResponseContainer",
    "ThreadSession",
    "UTCDateTime",
    "UsageRecord",
    "UsageRollup",
    "UsageRollupMonth",
    "utcnow",
]

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware on the way in and out, also on SQLite (which stores no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Money(TypeDecorator[Decimal]):
    """Numeric(20, 10) on PostgreSQL. On SQLite, an integer count of 1e-10 dollars: SQLite has no
    decimal type (NUMERIC stores a float), so a float column would round costs and SUM() them
    in floating point; integers keep storage and SUM() exact on both backends."""

    impl = Numeric(20, 10, asdecimal=True)
    cache_ok = True
    _SCALE = 10
    _QUANTUM = Decimal(1).scaleb(-_SCALE)

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(self.impl)

    def process_bind_param(self, value: Decimal | int | None, dialect) -> Decimal | int | None:
        if value is None:
            return None
        # Round half away from zero to the column's scale, as PostgreSQL does.
        value = Decimal(value).quantize(self._QUANTUM, rounding=ROUND_HALF_UP)
        if dialect.name == "sqlite":
            return int(value.scaleb(self._SCALE))
        return value

    def process_result_value(self, value: Decimal | int | None, dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)).scaleb(-self._SCALE)
        return Decimal(value)


class Base(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dt.datetime: UTCDateTime(), Decimal: Money()}


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


class AssistantName(Base):
    """The name of an assistant, from the assistant objects that passed through the proxy (a
    create, a retrieve, a list): reports show it beside the id."""

    __tablename__ = "assistant_names"

    assistant_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(256))
    seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    """One change made to recorded usage after the fact (a reassign, a reprice): when, what
    (`action` and its `detail` as JSON: the selection and the change), how many rows, and the
    money it moved or changed."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    action: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[Decimal] = mapped_column(default=Decimal(0))


class CollectionJob(Base):
    """The outbox: an object of a usage source (an Assistants run), opened when the object is
    first seen in any status, still to be collected and recorded. `source` names the source
    that collects it (the kind of the usage row it becomes); a new source adds its jobs here
    and its columns by migration.

    Written before any fetch, so a restart loses nothing. The credential is not here (never at
    rest): a replica only claims jobs whose key fingerprint it holds in memory, or jobs whose
    object carried reported usage once `reported_usage_wait` has passed.
    """

    __tablename__ = "collection_jobs"
    __table_args__ = (
        Index("ix_collection_jobs_next_attempt_at", "next_attempt_at"),
        UniqueConstraint("source", "object_id", name="uq_collection_jobs_source_object_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    source: Mapped[str] = mapped_column(
        String(64), default="assistants.run", server_default="assistants.run"
    )
    object_id: Mapped[str] = mapped_column(String(255))
    thread_id: Mapped[str | None] = mapped_column(String(255))  # an Assistants run's thread
    # Follow-up URLs are built from these: the path prefix before the object's own path (for a
    # run, before /threads/) and the query string (Azure's api-version) of the request in
    # which the object was seen.
    api_prefix: Mapped[str] = mapped_column(String(512))
    api_query: Mapped[str] = mapped_column(String(1024), default="")
    object_json: Mapped[str] = mapped_column(Text)
    key_fingerprint: Mapped[str | None] = mapped_column(String(64), index=True)
    key_hint: Mapped[str | None] = mapped_column(String(32))
    team: Mapped[str | None] = mapped_column(String(128))
    tag: Mapped[str | None] = mapped_column(String(128))
    project: Mapped[str | None] = mapped_column(String(255))
    organization: Mapped[str | None] = mapped_column(String(255))
    has_reported_usage: Mapped[bool] = mapped_column(default=False)
    # Opened when the object was first seen, not yet seen finished: the collector follows it.
    in_progress: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_until: Mapped[dt.datetime | None]


class KeyTeam(Base):
    __tablename__ = "key_teams"

    key_fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_hint: Mapped[str | None] = mapped_column(String(32))
    team: Mapped[str] = mapped_column(String(128))
    label: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ProjectTeam(Base):
    __tablename__ = "project_teams"

    project: Mapped[str] = mapped_column(String(255), primary_key=True)
    team: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ResponseContainer(Base):
    """A code interpreter container of the Responses API and the response that is charged its
    session: the first to be recorded, on any replica (insert or nothing decides)."""

    __tablename__ = "response_containers"

    container_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    response_id: Mapped[str] = mapped_column(String(255))
    claimed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class MappingVersion(Base):
    """One row (id 1) whose version every change of key_teams or project_teams increments, in
    the same transaction: replicas poll it (a primary-key read) and drop their cached teams
    when it moves, so a mapping applies everywhere within a poll interval."""

    __tablename__ = "mapping_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)


class ThreadSession(Base):
    """The code interpreter session currently open in a thread (billed per session-hour)."""

    __tablename__ = "thread_sessions"

    thread_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    session_started_at: Mapped[dt.datetime]
    sessions: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class CodeInterpreterCall(Base):
    """Each recorded code interpreter call of a thread. Sessions are counted from all of them
    (a session lasts an hour from its first call), so the count is exact whatever order the
    thread's runs are collected in: a run's sessions are the thread's total after it minus
    before it."""

    __tablename__ = "code_interpreter_calls"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    thread_id: Mapped[str] = mapped_column(String(255), index=True)
    run_id: Mapped[str] = mapped_column(String(255))
    called_at: Mapped[dt.datetime]


class ProxySecret(Base):
    """Server-side secrets generated once and shared by every replica (the key HMAC secret)."""

    __tablename__ = "proxy_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class BilledCost(Base):
    """What the provider billed: one row per UTC day, project, key and line item, as its costs
    API (or an Azure cost export) reports it. A pull replaces the days it covers, so a day that
    was still open when it was first pulled ends up as billed."""

    __tablename__ = "billed_costs"
    __table_args__ = (
        UniqueConstraint(
            "source",
            "day",
            "project",
            "api_key_id",
            "deployment",
            "line_item",
            name="uq_billed_costs_source",
        ),
        Index("ix_billed_costs_day", "day"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    source: Mapped[str] = mapped_column(String(16))  # "openai" | "azure"
    day: Mapped[str] = mapped_column(String(10))  # YYYY-MM-DD, UTC
    project: Mapped[str] = mapped_column(String(255), default="")
    api_key_id: Mapped[str] = mapped_column(String(255), default="")
    # An Azure cost export's deployment (its rows have no project or key); "" elsewhere.
    deployment: Mapped[str] = mapped_column(String(255), default="")
    line_item: Mapped[str] = mapped_column(String(255), default="")
    amount: Mapped[Decimal]
    currency: Mapped[str] = mapped_column(String(8), default="usd")
    pulled_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class BillingKey(Base):
    """An API key as the provider's admin API lists it: its id, project, name and redacted
    value (`sk-...abcd`): never the key."""

    __tablename__ = "billing_keys"

    api_key_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    project: Mapped[str] = mapped_column(String(255))
    project_name: Mapped[str | None] = mapped_column(String(255))
    name: Mapped[str | None] = mapped_column(String(255))
    redacted_value: Mapped[str | None] = mapped_column(String(64))
    seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Reconciliation(Base):
    """One true-up of a month: its adjustment rows (usage_records of kind `adjustment`) carry
    its id in their object_id and tag, and go with it on undo."""

    __tablename__ = "reconciliations"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), unique=True)
    adjusted_usd: Mapped[Decimal]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class BillingLease(Base):
    """Which replica runs the scheduled billing pull, until when: taken by a conditional
    UPDATE, so exactly one holds it, and another takes over when it runs out."""

    __tablename__ = "billing_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[dt.datetime]


class Budget(Base):
    """A spending limit on one subject (a team, a key by fingerprint, or an OpenAI project) per
    UTC calendar period (month, week from Monday, day), with the percentages at which an alert
    goes out and whether requests are refused once it is reached. One per subject and period:
    `budgets set` replaces it. Every replica reads this table each refresh (proxy/budgets)."""

    __tablename__ = "budgets"
    __table_args__ = (
        UniqueConstraint("subject_kind", "subject", "period", name="uq_budgets_subject_kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject_kind: Mapped[str] = mapped_column(String(16))  # "team" | "key" | "project"
    subject: Mapped[str] = mapped_column(String(255))  # a team, a fingerprint, a project id
    key_hint: Mapped[str | None] = mapped_column(String(32))  # a key's, for people to read
    limit_usd: Mapped[Decimal]
    period: Mapped[str] = mapped_column(String(8))  # "month" | "week" | "day"
    warn: Mapped[str] = mapped_column(String(128), default="")  # ascending percents, "50,80"
    enforce: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Alert(Base):
    """The alert outbox of every source ("budget", "reconcile", ...): one row per source and
    `dedup_key` (the source's own identity of the alert, such as a budget's period and
    threshold), inserted or nothing, so an alert exists once whichever replicas saw its cause.
    A sender claims it under a lease (claimed_by, claimed_until), posts `payload`, and sets
    sent_at; a failure sets next_attempt_at."""

    __tablename__ = "alerts"
    __table_args__ = (
        UniqueConstraint("source", "dedup_key", name="uq_alerts_source"),
        Index("ix_alerts_sent_at", "sent_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    dedup_key: Mapped[str] = mapped_column(String(255))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(String(255))
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_until: Mapped[dt.datetime | None]
    sent_at: Mapped[dt.datetime | None]


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
