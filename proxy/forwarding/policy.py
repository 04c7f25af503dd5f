"""The seam through which something above the wire may refuse a request before it is
forwarded (budgets' enforcement): a Policy, given the request's metadata, answers None
(forward it) or a Refusal, which the Forwarder sends as the response without contacting the
upstream. Nothing of what decides is here: the app wires an implementation in.

`refusal` runs on every forwarded request, so it must be cheap (an in-memory lookup); the
Forwarder fails open when it raises (logged, the request forwarded)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from proxy.forwarding.upstream.compat import request_key

__all__ = ["REFUSED_BY", "Policy", "Refusal", "RequestMeta"]


@dataclass(frozen=True, slots=True)
class RequestMeta:
    method: str
    path: str
    query_string: str
    # The headers as they will be sent upstream (which key and project), and as received
    # (the proxy's own X-Usage-* headers, never forwarded).
    sent: Mapping[str, str]
    received: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    body: bytes  # JSON
    headers: Mapping[str, str] = field(default_factory=dict)
    # For the access log line: what refused it (e.g. "budget 3").
    by: str = ""


class Policy(Protocol):
    async def refusal(self, meta: RequestMeta) -> Refusal | None: ...


# On the request, for the access log: the Refusal's `by`.
REFUSED_BY = request_key("refused_by", str)
