"""What is still being collected: jobs, run intents, and the claims that price a tool session
once."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from proxy.db.models.base import Base, utcnow

__all__ = [
    "CodeInterpreterCall",
    "CollectionJob",
    "ResponseContainer",
    "RunIntent",
    "ThreadSession",
]


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


class RunIntent(Base):
    """A run create on its way upstream (proxy.db.run_intents): written before the create is
    forwarded, deleted with the job of the run it made (or at once when it made none). One left
    behind by a dead worker is recovered by listing the thread's runs. A create-and-run's has
    no thread: it cannot be recovered, only matched with a sighting of its run elsewhere or
    marked unseen (proxy.db.unseen_creates). The key is not here: only its fingerprint, as in
    collection_jobs."""

    __tablename__ = "run_intents"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    thread_id: Mapped[str | None] = mapped_column(String(255))  # None: a create-and-run
    api_prefix: Mapped[str] = mapped_column(String(512))
    api_query: Mapped[str] = mapped_column(String(1024), default="")
    key_fingerprint: Mapped[str | None] = mapped_column(String(64), index=True)
    key_hint: Mapped[str | None] = mapped_column(String(32))
    team: Mapped[str | None] = mapped_column(String(128))
    tag: Mapped[str | None] = mapped_column(String(128))
    project: Mapped[str | None] = mapped_column(String(255))
    organization: Mapped[str | None] = mapped_column(String(255))
    # The serving process that forwards the create (proxy.accounting.process.owners).
    worker: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # A create-and-run's request's, when its body named one (what an operator asks about).
    assistant_id: Mapped[str | None] = mapped_column(String(255))
    # Set once, by one replica: its worker died and nothing matched it (a run maybe unrecorded).
    unseen_at: Mapped[dt.datetime | None]


class ResponseContainer(Base):
    """A code interpreter container of the Responses API and the response that is charged its
    session: the first to be recorded, on any replica (insert or nothing decides)."""

    __tablename__ = "response_containers"

    container_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    response_id: Mapped[str] = mapped_column(String(255))
    claimed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


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
