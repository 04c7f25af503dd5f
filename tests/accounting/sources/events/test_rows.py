import dataclasses
import datetime as dt
from decimal import Decimal

import pytest

from proxy.accounting.attribution import Attribution
from proxy.accounting.estimate.chat import ChatStream
from proxy.accounting.pricing import load_price_table
from proxy.accounting.sources.events.rows import (
    chat_row,
    chat_stream_row,
    embedding_row,
    is_chat_completion,
    is_embedding_list,
    response_containers,
    response_in_event,
    response_row,
    terminal_response,
)
from proxy.accounting.usage import UsageRow

NOW = dt.datetime(2025, 9, 1, 12, tzinfo=dt.UTC)
T = 1_756_000_000  # 2025-08-24
WHO = Attribution("fp", "sk-...1234", "team-a", "tag-1", "proj_1", "org_1")


@pytest.fixture(scope="module")
def prices():
    return load_price_table(use_genai_prices=False)


def make_response(**fields) -> dict:
    response = {
        "id": "resp_1",
        "object": "response",
        "created_at": T,
        "model": "gpt-4.1",
        "status": "completed",
        "output": [
            {"type": "web_search_call", "id": "ws_1", "status": "completed"},
            {"type": "message", "id": "msg_1", "role": "assistant", "content": []},
        ],
        "usage": {
            "input_tokens": 20,
            "output_tokens": 7,
            "total_tokens": 27,
            "input_tokens_details": {"cached_tokens": 4},
            "output_tokens_details": {"reasoning_tokens": 3},
        },
    }
    return response | fields


# --- recognition ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "terminal"),
    [
        (make_response(), True),
        (make_response(status="incomplete"), True),
        (make_response(status="failed"), True),
        (make_response(status="cancelled"), True),
        (make_response(status="in_progress"), False),
        (make_response(status="queued"), False),
        (make_response(object="thread.run"), False),
        (make_response(id=None), False),
        ([make_response()], False),
    ],
)
def test_terminal_response(body: object, terminal: bool) -> None:
    assert (terminal_response(body) is body) is terminal


@pytest.mark.parametrize(
    ("data", "found"),
    [
        ({"type": "response.completed", "response": make_response()}, True),
        ({"type": "response.failed", "response": make_response(status="failed")}, True),
        ({"type": "response.incomplete", "response": make_response(status="incomplete")}, True),
        ({"type": "response.created", "response": make_response(status="in_progress")}, False),
        ({"type": "response.in_progress", "response": make_response()}, False),
        ({"type": "response.completed"}, False),
        ("[DONE]", False),
    ],
)
def test_response_in_event(data: object, found: bool) -> None:
    assert (response_in_event(data) is not None) is found


def test_chat_and_embedding_recognition() -> None:
    assert is_chat_completion({"object": "chat.completion", "choices": []})
    assert not is_chat_completion({"object": "chat.completion.chunk", "choices": []})
    embeddings = {"object": "list", "data": [{"object": "embedding"}], "usage": {}}
    assert is_embedding_list(embeddings)
    assert not is_embedding_list({**embeddings, "usage": None})
    assert not is_embedding_list({**embeddings, "data": [{"object": "model"}]})
    assert not is_embedding_list({**embeddings, "data": []})


# --- responses -----------------------------------------------------------------------------
def test_response_row(prices) -> None:
    row = response_row(make_response(), WHO, prices, NOW)
    assert (row.kind, row.object_id, row.status, row.model) == (
        "response",
        "resp_1",
        "completed",
        "gpt-4.1",
    )
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (20, 7, 27)
    assert (row.cached_tokens, row.reasoning_tokens, row.usage_source) == (4, 3, "reported")
    assert (row.team, row.tag, row.key_hint, row.project) == (
        "team-a",
        "tag-1",
        "sk-...1234",
        "proj_1",
    )
    assert row.occurred_at == dt.datetime.fromtimestamp(T, dt.UTC)
    assert row.web_search_calls == 1
    # gpt-4.1: 16 uncached at $2, 4 cached at $0.50, 7 output at $8 per 1M; one search at $10/1k.
    tokens = (16 * Decimal(2) + 4 * Decimal("0.5") + 7 * Decimal(8)) / 1_000_000
    assert row.cost_usd == tokens + Decimal("0.01")


def test_response_row_takes_completed_at_then_now(prices) -> None:
    done = response_row(make_response(completed_at=T + 60), WHO, prices, NOW)
    assert done.occurred_at == dt.datetime.fromtimestamp(T + 60, dt.UTC)
    assert response_row(make_response(created_at=None), WHO, prices, NOW).occurred_at == NOW


@pytest.mark.parametrize(
    ("response", "request_body", "conversation", "prompt"),
    [
        (
            make_response(conversation={"id": "conv_1"}, prompt={"id": "pmpt_1"}),
            None,
            "conv_1",
            "pmpt_1",
        ),
        (make_response(conversation="conv_2"), None, "conv_2", None),
        (make_response(conversation=None), {"conversation": "conv_3"}, "conv_3", None),
        (
            make_response(),
            {"conversation": {"id": "conv_4"}, "prompt": {"id": "pmpt_4"}},
            "conv_4",
            "pmpt_4",
        ),
        (make_response(), None, None, None),
    ],
)
def test_response_conversation_and_prompt(prices, response, request_body, conversation, prompt):
    row = response_row(response, WHO, prices, NOW, request=request_body)
    assert (row.conversation_id, row.prompt_id) == (conversation, prompt)


def ci(container: str | None) -> dict:
    item = {"type": "code_interpreter_call", "id": "ci", "status": "completed"}
    return item | ({"container_id": container} if container else {})


@pytest.mark.parametrize(
    ("output", "known", "calls", "sessions"),
    [
        ([ci("cntr_a"), ci("cntr_a"), ci("cntr_b")], (), 3, 2),
        ([ci("cntr_a"), ci("cntr_b")], ("cntr_a",), 2, 1),
        ([ci("cntr_a")], ("cntr_a",), 1, 0),
        ([ci(None), ci(None)], (), 2, 1),
        ([], (), 0, 0),
    ],
)
def test_code_interpreter_sessions_are_new_containers(prices, output, known, calls, sessions):
    response = make_response(output=output)
    assert response_containers(response) == {
        i["container_id"] for i in output if "container_id" in i
    }
    row = response_row(response, WHO, prices, NOW, known_containers=known)
    assert (row.code_interpreter_calls, row.code_interpreter_sessions) == (calls, sessions)
    assert row.cost_usd == response_row(make_response(output=[]), WHO, prices, NOW).cost_usd + (
        sessions * Decimal("0.03")
    )


def test_tool_calls_are_counted_and_priced(prices) -> None:
    output = [
        {"type": "file_search_call", "id": "fs_1"},
        {"type": "file_search_call", "id": "fs_2"},
        {"type": "web_search_call", "id": "ws_1"},
        {"type": "function_call", "id": "fc_1"},
        "junk",
    ]
    row = response_row(make_response(output=output, usage=None), WHO, prices, NOW)
    assert (row.file_search_calls, row.web_search_calls, row.function_calls) == (2, 1, 1)
    assert row.cost_usd == 2 * Decimal("0.0025") + Decimal("0.01")


def test_failed_response_without_usage_counts_at_zero(prices) -> None:
    row = response_row(make_response(status="failed", usage=None, output=[]), WHO, prices, NOW)
    assert (row.status, row.usage_source, row.total_tokens, row.cost_usd) == (
        "failed",
        "none",
        0,
        0,
    )


# --- chat completions ----------------------------------------------------------------------
def completion(**fields) -> dict:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": T,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "a"}, {"id": "b"}],
                },
            }
        ],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 2},
            "completion_tokens_details": {"reasoning_tokens": 1},
        },
    }
    return body | fields


def test_chat_row(prices) -> None:
    row = chat_row(completion(), WHO, prices, NOW, object_id="chatcmpl-1")
    assert (row.kind, row.object_id, row.status, row.usage_source) == (
        "chat.completion",
        "chatcmpl-1",
        "completed",
        "reported",
    )
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (12, 5, 17)
    assert (row.cached_tokens, row.reasoning_tokens, row.function_calls) == (2, 1, 2)
    assert row.occurred_at == dt.datetime.fromtimestamp(T, dt.UTC)
    # gpt-4o-mini: 10 at $0.15, 2 cached at $0.075, 5 at $0.60 per 1M.
    expected = (10 * Decimal("0.15") + 2 * Decimal("0.075") + 5 * Decimal("0.6")) / 1_000_000
    assert row.cost_usd == expected


def test_rows_built_from_templates_are_whole_usage_rows(prices) -> None:
    # Rows are built from a template dict, not UsageRow(...): every field must be there, and
    # the row must be the one the keywords would make.
    rows = [
        chat_row(completion(), WHO, prices, NOW, object_id="chatcmpl-1"),
        chat_stream_row(stream(DELTA, STOP), WHO, prices, NOW, object_id="c", estimate=(3, 4)),
        embedding_row(
            {"object": "list", "model": "m", "usage": {"prompt_tokens": 3}, "data": []},
            WHO,
            prices,
            NOW,
            object_id="e",
        ),
    ]
    names = [f.name for f in dataclasses.fields(UsageRow)]
    for row in rows:
        assert sorted(vars(row)) == sorted(names)
        assert row == UsageRow(**{name: getattr(row, name) for name in names})
        assert dataclasses.replace(row, team="other").team == "other"
    assert rows[0] == UsageRow(
        kind="chat.completion",
        object_id="chatcmpl-1",
        occurred_at=dt.datetime.fromtimestamp(T, dt.UTC),
        usage_source="reported",
        model="gpt-4o-mini",
        status="completed",
        key_fingerprint="fp",
        key_hint="sk-...1234",
        team="team-a",
        tag="tag-1",
        project="proj_1",
        organization="org_1",
        prompt_tokens=12,
        completion_tokens=5,
        total_tokens=17,
        cached_tokens=2,
        reasoning_tokens=1,
        function_calls=2,
        cost_usd=Decimal("0.0000046500"),
    )
    assert (rows[1].estimated_prompt_tokens, rows[1].estimated_completion_tokens) == (3, 4)


@pytest.mark.parametrize(
    ("body", "tokens", "calls", "when", "model"),
    [
        (
            completion(created=True, usage={"prompt_tokens": True, "completion_tokens": 2.5}),
            (0, 0, 0),
            2,
            NOW,
            "gpt-4o-mini",
        ),
        (
            completion(created=1.5e9, choices=[None, {"message": []}, {"message": {"a": 1}}]),
            (12, 5, 2),
            0,
            dt.datetime.fromtimestamp(1.5e9, dt.UTC),
            "gpt-4o-mini",
        ),
        (
            completion(
                created=-4,
                choices=[{"message": {"function_call": {}, "tool_calls": {"a": 1}}}],
                usage={"prompt_tokens": -1, "completion_tokens": 3, "prompt_tokens_details": []},
            ),
            (0, 3, 0),
            1,
            NOW,
            "gpt-4o-mini",
        ),
        (completion(created="1756000000", model=7, choices=None), (12, 5, 2), 0, NOW, None),
    ],
)
def test_chat_row_reads_odd_bodies(prices, body, tokens, calls, when, model) -> None:
    row = chat_row(body, WHO, prices, NOW, object_id="x")
    assert (row.prompt_tokens, row.completion_tokens, row.cached_tokens) == tokens
    assert (row.function_calls, row.occurred_at, row.model) == (calls, when, model)


def test_chat_row_without_usage(prices) -> None:
    row = chat_row(completion(usage=None, created=None), WHO, prices, NOW, object_id="x")
    assert (row.usage_source, row.total_tokens, row.occurred_at) == ("none", 0, NOW)


def stream(*chunks: dict) -> ChatStream:
    s = ChatStream()
    for c in chunks:
        s.add({"id": "chatcmpl-9", "model": "gpt-4o", "created": T} | c)
    return s


DELTA = {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}
STOP = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
USAGE = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}


# gpt-4o on 2025-08-24: $2.50 per million prompt tokens, $10.00 per million completion tokens.
@pytest.mark.parametrize(
    ("chunks", "estimate", "status", "source", "tokens", "cost"),
    [
        ((DELTA, STOP, USAGE), None, "completed", "reported", (9, 2), "0.0000425"),
        ((DELTA, STOP), (30, 4), "completed", "estimated", (30, 4), "0.000115"),
        ((DELTA,), (30, 1), "incomplete", "estimated", (30, 1), "0.000085"),
        ((DELTA, STOP), None, "completed", "none", (0, 0), "0"),
    ],
)
def test_chat_stream_row(prices, chunks, estimate, status, source, tokens, cost) -> None:
    row = chat_stream_row(
        stream(*chunks), WHO, prices, NOW, object_id="chatcmpl-9", estimate=estimate
    )
    assert (row.kind, row.object_id, row.model) == ("chat.completion", "chatcmpl-9", "gpt-4o")
    assert (row.status, row.usage_source) == (status, source)
    assert (row.prompt_tokens, row.completion_tokens) == tokens
    estimated = (row.estimated_prompt_tokens, row.estimated_completion_tokens)
    assert estimated == (estimate or (None, None))
    # A row whose tokens are the estimate names the estimator that made them.
    assert row.estimator == ("chat1" if source == "estimated" else None)
    assert row.occurred_at == dt.datetime.fromtimestamp(T, dt.UTC)
    assert row.cost_usd == Decimal(cost)


def test_chat_stream_row_falls_back_to_the_request_model(prices) -> None:
    s = ChatStream()
    s.add({"choices": [{"index": 0, "delta": {"content": "x"}}]})
    row = chat_stream_row(s, WHO, prices, NOW, object_id="x", estimate=(1, 1), model="gpt-4o")
    assert (row.model, row.occurred_at) == ("gpt-4o", NOW)


# --- embeddings ----------------------------------------------------------------------------
def test_embedding_row(prices) -> None:
    body = {
        "object": "list",
        "model": "text-embedding-3-small",
        "data": [{"object": "embedding", "index": 0, "embedding": "AAAA"}],
        "usage": {"prompt_tokens": 1000, "total_tokens": 1000},
    }
    row = embedding_row(body, WHO, prices, NOW, object_id="req_1")
    assert (row.kind, row.object_id, row.status, row.occurred_at) == (
        "embedding",
        "req_1",
        "completed",
        NOW,
    )
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (1000, 0, 1000)
    assert row.cost_usd == Decimal("0.00002")
