"""The bill: imported billed costs, the billing API key, reconciliations and the pull's lease."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from proxy.db.models.base import Base, utcnow

__all__ = ["BilledCost", "BillingKey", "BillingLease", "Reconciliation"]


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
