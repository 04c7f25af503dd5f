"""What a collection job holds (table collection_jobs): `NewJob`, the content a caller
enqueues, and `ClaimedJob`, a row a worker claimed. Shared by the enqueue side
(proxy.db.jobs) and the claim side (proxy.db.job_claims)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Table

from proxy.db.models import CollectionJob

__all__ = ["ASSISTANTS_SOURCE", "CLAIMED_FIELDS", "NEW_FIELDS", "ClaimedJob", "NewJob", "table"]

table: Table = CollectionJob.__table__  # type: ignore[assignment]
# The source of every job written before jobs named theirs (and the only one so far).
ASSISTANTS_SOURCE = "assistants.run"


@dataclass(frozen=True, kw_only=True)
class NewJob:
    """The content of a collection job; never a credential (only its fingerprint and hint)."""

    # The usage source that collects the job: the kind of the row it becomes.
    source: str = ASSISTANTS_SOURCE
    object_id: str
    thread_id: str | None = None
    api_prefix: str
    api_query: str = ""
    object_json: str
    key_fingerprint: str | None = None
    key_hint: str | None = None
    team: str | None = None
    tag: str | None = None
    project: str | None = None
    organization: str | None = None
    has_reported_usage: bool = False
    # Not seen finished yet: the collector follows the object until it is.
    in_progress: bool = False


@dataclass(frozen=True, kw_only=True)
class ClaimedJob(NewJob):
    id: int
    attempts: int
    created_at: dt.datetime
    next_attempt_at: dt.datetime
    claimed_until: dt.datetime
    last_error: str | None = None


NEW_FIELDS = tuple(f.name for f in dataclasses.fields(NewJob))
CLAIMED_FIELDS = tuple(f.name for f in dataclasses.fields(ClaimedJob))
