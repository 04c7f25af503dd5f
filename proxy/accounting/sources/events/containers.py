"""Code interpreter containers of the Responses API: which ones a response shows, what the
Containers API says of one, and the usage row of its session. Pure.

A response shows a container in a `code_interpreter_call` item's `container_id`, and in its
echoed `tools`: a code_interpreter tool's `container` is "string | CodeInterpreterToolAuto" in
the API reference (platform.openai.com/docs/api-reference/responses/object), the string being
the container's id; that is how a container started by `{"type": "auto"}` that no call used is
seen at all.

A container's lifetime comes from GET /containers/{id} (API reference, "Retrieve container"):
created_at, last_active_at (unix seconds), expires_after {anchor: "last_active_at", minutes},
status ("active", "expired", "deleted"...), memory_limit. The session is priced once it can
no longer grow: the status is not "active", or its expiry (last_active_at + minutes) passed.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.accounting.pricing import PriceTable
from proxy.accounting.pricing.containers import billed_minutes, session_cost
from proxy.accounting.pricing.cost import session_tool
from proxy.accounting.sources.assistants.rows import to_datetime
from proxy.accounting.usage import UsageRow
from proxy.keys import split_query

__all__ = [
    "CONTAINER_KIND",
    "ContainerJob",
    "ContainerLife",
    "api_context",
    "container_row",
    "echoed_containers",
    "job_content",
    "life_of",
]

# The kind of a container session's row, and the source of its collection job.
CONTAINER_KIND = "container"
_MEMORY = ("1g", "4g", "16g", "64g")
_DEFAULT_EXPIRY_MINUTES = 20


def echoed_containers(response: Mapping[str, Any]) -> set[str]:
    """Container ids a response's echoed code_interpreter tools resolved to."""
    tools = response.get("tools")
    found: set[str] = set()
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict) and tool.get("type") == "code_interpreter":
            container = tool.get("container")
            if isinstance(container, str) and container:
                found.add(container)
    return found


def api_context(path: str, query_string: str) -> tuple[str, str]:
    """(prefix, query) of the Containers API beside a Responses request: the path before
    `/responses` (`/v1`, or Azure's `/openai/v1`), and the query without credentials (Azure's
    `api-version` stays; a key in the query is replayed from memory with the key)."""
    idx = path.find("/responses")
    prefix = path[:idx] if idx >= 0 else "/v1"
    return prefix, split_query(query_string)[0] if query_string else ""


def job_content(response_id: str, memory: str, conversation_id: str | None) -> str:
    """What a container's collection job keeps of the response that claimed it."""
    return json.dumps({"response_id": response_id, "memory": memory, "conv": conversation_id})


@dataclass(frozen=True, slots=True)
class ContainerJob:
    """Where a response's containers are read back (the API prefix and query of the response's
    request) and the memory its request asked for."""

    api_prefix: str
    api_query: str
    memory: str

    def values(self, row: Any) -> dict[str, object]:
        """The collection_jobs values of a container claimed by the response `row`."""
        return {
            "source": CONTAINER_KIND,
            "api_prefix": self.api_prefix,
            "api_query": self.api_query,
            "object_json": job_content(row.object_id, self.memory, row.conversation_id),
            "key_fingerprint": row.key_fingerprint,
            "key_hint": row.key_hint,
            "team": row.team,
            "tag": row.tag,
            "project": row.project,
            "organization": row.organization,
            # Recordable without the key (one full session) once no replica held it a while.
            "has_reported_usage": True,
        }


@dataclass(frozen=True, slots=True)
class ContainerLife:
    created_at: dt.datetime
    last_active_at: dt.datetime | None
    expires_at: dt.datetime | None
    active: bool
    memory: str | None

    def final(self, now: dt.datetime) -> bool:
        """True once the session can no longer grow."""
        return not self.active or (self.expires_at is not None and now >= self.expires_at)


def life_of(container: Mapping[str, Any]) -> ContainerLife | None:
    """The lifetime of a Containers API object; None when it has no created_at."""
    created = to_datetime(container.get("created_at"))
    if created is None:
        return None
    last = to_datetime(container.get("last_active_at"))
    expiry = container.get("expires_after")
    minutes = expiry.get("minutes") if isinstance(expiry, dict) else None
    if not isinstance(minutes, int) or isinstance(minutes, bool) or minutes < 0:
        minutes = _DEFAULT_EXPIRY_MINUTES
    memory = container.get("memory_limit")
    return ContainerLife(
        created_at=created,
        last_active_at=last,
        expires_at=(last or created) + dt.timedelta(minutes=minutes),
        active=container.get("status") == "active",
        memory=memory.lower() if isinstance(memory, str) and memory.lower() in _MEMORY else None,
    )


def container_row(
    container_id: str,
    job_json: str,
    who: Mapping[str, Any],
    life: ContainerLife | None,
    prices: PriceTable,
    now: dt.datetime,
) -> UsageRow:
    """The row of one container session, attributed (`who`: key, team, tag, project,
    organization columns) to the response that claimed it. `life` None: its lifetime is
    unknown, and it is charged one full session as an estimate."""
    try:
        content = json.loads(job_json)
    except ValueError:
        content = {}
    content = content if isinstance(content, dict) else {}
    memory = (life.memory if life else None) or str(content.get("memory") or "1g")
    created = life.created_at if life else now.replace(microsecond=0)
    minutes = billed_minutes(created, life.last_active_at) if life else None
    conversation = content.get("conv")
    return UsageRow(
        kind=CONTAINER_KIND,
        object_id=container_id,
        # The session's start: the day and month it is billed in.
        occurred_at=created,
        usage_source="reported" if minutes is not None else "estimated",
        conversation_id=conversation if isinstance(conversation, str) else None,
        # The price table's name of the session (by memory): what reprice prices it by.
        model=session_tool(memory),
        status="completed",
        # The minutes billed (reprice reads them back); none: one full session.
        estimate_basis=None if minutes is None else f"{minutes} min",
        code_interpreter_sessions=1,
        cost_usd=session_cost(prices, memory, created, minutes),
        **who,
    )
