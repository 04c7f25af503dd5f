"""Who is who: keys and projects to teams, assistant names, the proxy's secret, the audit log."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from proxy.db.models.base import Base, utcnow

__all__ = ["AssistantName", "AuditEntry", "KeyTeam", "MappingVersion", "ProjectTeam", "ProxySecret"]


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


class MappingVersion(Base):
    """One row (id 1) whose version every change of key_teams or project_teams increments, in
    the same transaction: replicas poll it (a primary-key read) and drop their cached teams
    when it moves, so a mapping applies everywhere within a poll interval."""

    __tablename__ = "mapping_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)


class AssistantName(Base):
    """The name of an assistant, from the assistant objects that passed through the proxy (a
    create, a retrieve, a list): reports show it beside the id."""

    __tablename__ = "assistant_names"

    assistant_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(256))
    seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ProxySecret(Base):
    """Server-side secrets generated once and shared by every replica (the key HMAC secret)."""

    __tablename__ = "proxy_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


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
