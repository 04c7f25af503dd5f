"""Budgets and the alert outbox."""

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

__all__ = ["Alert", "Budget"]


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
