"""Responses, chat completions and embeddings: recognised by content, turned into usage rows.
Pure: no I/O.

Recognition never looks at the path, so Azure's /openai/deployments/{d}/... works as /v1/...:
- a response is a JSON object with "object": "response", an id and a terminal status, either a
  body or the "response" of a `response.completed`, `response.failed` or `response.incomplete`
  event;
- a chat completion has "object": "chat.completion"; a streamed one is the events whose data has
  "object": "chat.completion.chunk", gathered by `proxy.accounting.estimate.chat.ChatStream`;
- embeddings are a list ("object": "list") of "object": "embedding" items with a usage object.

Rows: `kind` is "response", "chat.completion" or "embedding" and `object_id` the upstream's id.
`usage_source` is "reported" when the upstream's usage is used, "estimated" for a chat stream
without usage ("estimated_partial" when its request was larger than the proxy keeps, so its
prompt is a lower bound), and "none" when the upstream reported none and nothing can be estimated (a
response that failed before its usage was known): such a row counts the event at zero tokens.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from typing import Any

from proxy.accounting.attribution import Attribution
from proxy.accounting.estimate.chat import CHAT_ESTIMATOR, ChatStream
from proxy.accounting.pricing import PriceTable, Usage, cost_of, token_cost
from proxy.accounting.sources.assistants.rows import to_datetime, to_second
from proxy.accounting.sources.events.containers import echoed_containers
from proxy.accounting.sources.events.tools import container_memory, uses_search_preview
from proxy.accounting.usage import UsageRow, row_from, row_template

__all__ = [
    "CHAT_KIND",
    "EMBEDDING_KIND",
    "RESPONSE_KIND",
    "TERMINAL_RESPONSE_EVENTS",
    "TERMINAL_RESPONSE_STATUSES",
    "chat_row",
    "chat_stream_row",
    "embedding_row",
    "is_chat_completion",
    "is_embedding_list",
    "response_containers",
    "response_in_event",
    "response_row",
    "terminal_response",
]

RESPONSE_KIND = "response"
CHAT_KIND = "chat.completion"
EMBEDDING_KIND = "embedding"
TERMINAL_RESPONSE_STATUSES = frozenset({"completed", "failed", "incomplete", "cancelled"})
TERMINAL_RESPONSE_EVENTS = frozenset(
    {"response.completed", "response.failed", "response.incomplete"}
)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _id_of(value: object) -> str | None:
    """`"conv_1"` or `{"id": "conv_1", ...}`: requests and responses use both forms."""
    return _str(value) or _str(_dict(value).get("id"))


# --- recognition ---------------------------------------------------------------------------
def terminal_response(body: object) -> dict[str, Any] | None:
    """`body` if it is a response in a terminal status, else None."""
    if (
        isinstance(body, dict)
        and body.get("object") == "response"
        and isinstance(body.get("id"), str)
        and body.get("status") in TERMINAL_RESPONSE_STATUSES
    ):
        return body
    return None


def response_in_event(data: object) -> dict[str, Any] | None:
    """The response carried by the data of a terminal response event, else None."""
    if isinstance(data, dict) and data.get("type") in TERMINAL_RESPONSE_EVENTS:
        return terminal_response(data.get("response"))
    return None


def is_chat_completion(body: object) -> bool:
    return (
        isinstance(body, dict)
        and body.get("object") == "chat.completion"
        and isinstance(body.get("choices"), list)
    )


def is_embedding_list(body: object) -> bool:
    if not isinstance(body, dict) or body.get("object") != "list":
        return False
    data = body.get("data")
    return (
        isinstance(body.get("usage"), dict)
        and isinstance(data, list)
        and bool(data)
        and _dict(data[0]).get("object") == "embedding"
    )


# --- responses -----------------------------------------------------------------------------
def response_containers(response: Mapping[str, Any]) -> set[str]:
    """Ids of the containers the response's code interpreter calls ran in, and those its echoed
    code_interpreter tools resolved to (an auto container no call used)."""
    return echoed_containers(response) | {
        cid
        for item in _items(response)
        if item.get("type") == "code_interpreter_call" and (cid := _str(item.get("container_id")))
    }


def _items(response: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    output = response.get("output")
    return [i for i in output if isinstance(i, dict)] if isinstance(output, list) else []


def response_row(
    response: Mapping[str, Any],
    who: Attribution,
    prices: PriceTable,
    now: dt.datetime,
    *,
    request: Mapping[str, Any] | None = None,
    known_containers: Collection[str] = (),
) -> UsageRow:
    """The row of a terminal response. It happened at `completed_at`, else `created_at`, else
    `now`. Code interpreter sessions are its containers not in `known_containers` (a container
    is billed once, however many responses use it), and one for calls that name none.
    Conversation and prompt ids come from the response, else from its `request` body."""
    usage = response.get("usage")
    source = "reported" if isinstance(usage, dict) else "none"
    usage = _dict(usage)
    prompt, completion = _int(usage.get("input_tokens")), _int(usage.get("output_tokens"))
    cached = _int(_dict(usage.get("input_tokens_details")).get("cached_tokens"))
    reasoning = _int(_dict(usage.get("output_tokens_details")).get("reasoning_tokens"))
    items = _items(response)
    types = [item.get("type") for item in items]
    ci_calls = types.count("code_interpreter_call")
    unnamed = any(
        i.get("type") == "code_interpreter_call" and not _str(i.get("container_id")) for i in items
    )
    new = [c for c in response_containers(response) if c not in known_containers]
    sessions = len(new) + unnamed
    when = (
        to_datetime(response.get("completed_at"))
        or to_datetime(response.get("created_at"))
        or to_second(now)
    )
    model = _str(response.get("model"))
    searches = types.count("web_search_call")
    preview = uses_search_preview(response, request, model)
    billed = Usage(
        prompt_tokens=prompt,
        cached_tokens=cached,
        completion_tokens=completion,
        code_interpreter_sessions=sessions,
        file_search_calls=types.count("file_search_call"),
        web_search_calls=0 if preview else searches,
        web_search_preview_calls=searches if preview else 0,
        container_memory=container_memory(response, request) if sessions else "1g",
    )
    req = _dict(request)
    return UsageRow(
        kind=RESPONSE_KIND,
        object_id=response["id"],
        conversation_id=_id_of(response.get("conversation")) or _id_of(req.get("conversation")),
        prompt_id=_id_of(response.get("prompt")) or _id_of(req.get("prompt")),
        model=model,
        status=_str(response.get("status")),
        occurred_at=when,
        **who.columns(),
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_tokens=cached,
        reasoning_tokens=reasoning,
        usage_source=source,
        code_interpreter_calls=ci_calls,
        code_interpreter_sessions=sessions,
        file_search_calls=billed.file_search_calls,
        web_search_calls=billed.web_search_calls,
        web_search_preview_calls=billed.web_search_preview_calls,
        function_calls=types.count("function_call"),
        cost_usd=cost_of(prices, model, when, billed).billed,
    )


# --- chat completions ----------------------------------------------------------------------
# Rows are built from these templates (proxy.db.row_from): one is built per request.
_CHAT = row_template(kind=CHAT_KIND)
_EMBEDDING = row_template(kind=EMBEDDING_KIND, status="completed", usage_source="reported")
_fromtimestamp = dt.datetime.fromtimestamp
_UTC = dt.UTC


def _row(template: dict[str, Any], who: Attribution) -> dict[str, Any]:
    values = template.copy()
    values["key_fingerprint"] = who.key_fingerprint
    values["key_hint"] = who.key_hint
    values["team"] = who.team
    values["tag"] = who.tag
    values["project"] = who.project
    values["organization"] = who.organization
    return values


def _when(created: object, now: dt.datetime) -> dt.datetime:
    # A positive int is the common case; to_datetime decides all the others.
    if type(created) is int and created > 0:
        return _fromtimestamp(created, _UTC)
    return to_datetime(created) or to_second(now)


def _count(value: object) -> int:
    return value if type(value) is int and value > 0 else 0


def _chat_tokens(usage: Mapping[str, Any]) -> tuple[int, int, int, int]:
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if type(details) is dict else 0
    details = usage.get("completion_tokens_details")
    reasoning = _count(details.get("reasoning_tokens")) if type(details) is dict else 0
    return (
        _count(usage.get("prompt_tokens")),
        _count(usage.get("completion_tokens")),
        cached,
        reasoning,
    )


def _chat(
    values: dict[str, Any],
    object_id: str,
    model: str | None,
    when: dt.datetime,
    prices: PriceTable,
    tokens: tuple[int, int, int, int],
) -> UsageRow:
    prompt, completion, cached, reasoning = tokens
    values["object_id"] = object_id
    values["model"] = model
    values["occurred_at"] = when
    values["prompt_tokens"] = prompt
    values["completion_tokens"] = completion
    values["total_tokens"] = prompt + completion
    values["cached_tokens"] = cached
    values["reasoning_tokens"] = reasoning
    values["cost_usd"] = token_cost(prices, model, when, prompt, cached, completion)
    return row_from(values)


def chat_row(
    completion: Mapping[str, Any],
    who: Attribution,
    prices: PriceTable,
    now: dt.datetime,
    *,
    object_id: str,
) -> UsageRow:
    """The row of a chat completion body; `object_id` is its id (or the caller's stand-in)."""
    usage = completion.get("usage")
    calls = 0
    for choice in completion.get("choices") or ():
        message = choice.get("message") if type(choice) is dict else None
        if type(message) is dict:
            tool_calls = message.get("tool_calls")
            calls += len(tool_calls) if type(tool_calls) is list else 0
            calls += message.get("function_call") is not None
    values = _row(_CHAT, who)
    values["status"] = "completed"
    values["function_calls"] = calls
    if type(usage) is dict:
        values["usage_source"] = "reported"
        tokens = _chat_tokens(usage)
    else:
        values["usage_source"] = "none"
        tokens = (0, 0, 0, 0)
    model = _str(completion.get("model"))
    return _chat(values, object_id, model, _when(completion.get("created"), now), prices, tokens)


def chat_stream_row(
    stream: ChatStream,
    who: Attribution,
    prices: PriceTable,
    now: dt.datetime,
    *,
    object_id: str,
    estimate: tuple[int, int] | None,
    model: str | None = None,
    partial: bool = False,
) -> UsageRow:
    """The row of a stream: its reported usage, else `estimate` (None: the estimate failed, and
    the row counts the event at zero tokens), "estimated_partial" when the estimate could see
    only part of the request (`partial`). Status "completed" once the usage or a finish reason
    arrived, else "incomplete" (the stream broke off)."""
    done = stream.usage is not None or stream.finished
    values = _row(_CHAT, who)
    values["status"] = "completed" if done else "incomplete"
    values["function_calls"] = stream.tool_calls
    if estimate is not None:
        values["estimated_prompt_tokens"], values["estimated_completion_tokens"] = estimate
    if stream.usage is not None:
        tokens = _chat_tokens(stream.usage)
        values["usage_source"] = "reported"
    else:
        tokens = (*(estimate or (0, 0)), 0, 0)
        if estimate is None:
            values["usage_source"] = "none"
        else:
            values["usage_source"] = "estimated_partial" if partial else "estimated"
            values["estimator"] = CHAT_ESTIMATOR
    when = _when(stream.created, now)
    return _chat(values, object_id, stream.model or model, when, prices, tokens)


# --- embeddings ----------------------------------------------------------------------------
def embedding_row(
    body: Mapping[str, Any],
    who: Attribution,
    prices: PriceTable,
    now: dt.datetime,
    *,
    object_id: str,
) -> UsageRow:
    """The row of an embeddings list. The list has no id: the caller supplies one."""
    prompt = _int(_dict(body.get("usage")).get("prompt_tokens"))
    model = _str(body.get("model"))
    values = _row(_EMBEDDING, who)
    values["object_id"] = object_id
    values["model"] = model
    values["occurred_at"] = now = to_second(now)
    values["prompt_tokens"] = values["total_tokens"] = prompt
    values["cost_usd"] = token_cost(prices, model, now, prompt)
    return row_from(values)
