"""A container's lifetime from the Containers API, its billed minutes and its session's row."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from proxy.accounting.attribution import Attribution
from proxy.accounting.pricing import load_price_table
from proxy.accounting.pricing.containers import billed_minutes, session_cost
from proxy.accounting.sources.events.containers import (
    api_context,
    container_row,
    echoed_containers,
    job_content,
    life_of,
)
from proxy.accounting.sources.events.deployment import deployment_of

JUNE = dt.datetime(2026, 11, 2, 10, tzinfo=dt.UTC)
MAY = dt.datetime(2026, 5, 2, 10, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("seconds", "minutes"),
    [(0, 5), (1, 5), (299, 5), (300, 5), (301, 6), (12 * 60, 12), (45 * 60 + 1, 46)],
)
def test_minutes_round_up_with_a_five_minute_minimum(seconds: int, minutes: int):
    assert billed_minutes(JUNE, JUNE + dt.timedelta(seconds=seconds)) == minutes


def test_sessions_before_per_minute_billing_are_not_eligible():
    assert billed_minutes(MAY, MAY + dt.timedelta(minutes=12)) is None
    prices = load_price_table()
    assert session_cost(prices, "1g", MAY, None) == Decimal("0.03")
    assert session_cost(prices, "64g", JUNE, 10) == Decimal("0.96")


def test_life_is_final_once_expired_or_no_longer_active():
    created = int(JUNE.timestamp())
    body = {
        "created_at": created,
        "last_active_at": created + 120,
        "status": "active",
        "expires_after": {"anchor": "last_active_at", "minutes": 20},
        "memory_limit": "16G",
    }
    life = life_of(body)
    assert life is not None and life.memory == "16g"
    assert life.expires_at == JUNE + dt.timedelta(minutes=22)
    assert not life.final(JUNE + dt.timedelta(minutes=21))
    assert life.final(JUNE + dt.timedelta(minutes=22))
    assert life_of(body | {"status": "expired"}).final(JUNE)  # type: ignore[union-attr]
    assert life_of({"status": "expired"}) is None


def test_the_row_of_a_session_is_the_claiming_response_s():
    who = Attribution("fp", "sk-...abcd", "red", "t", "proj_1", None)
    created = int(JUNE.timestamp())
    life = life_of({"created_at": created, "last_active_at": created + 12 * 60, "status": "x"})
    row = container_row(
        "cntr_1", job_content("resp_1", "4g", "conv_1"), who.columns(), life,
        load_price_table(), JUNE,
    )  # fmt: skip
    assert (row.kind, row.object_id, row.team, row.conversation_id) == (
        "container", "cntr_1", "red", "conv_1",
    )  # fmt: skip
    assert (row.cost_usd, row.model, row.estimate_basis) == (
        Decimal("0.072"), "code_interpreter_session_4g", "12 min",
    )  # fmt: skip
    unknown = container_row("c", "not json", who.columns(), None, load_price_table(), JUNE)
    assert (unknown.cost_usd, unknown.usage_source) == (Decimal("0.03"), "estimated")


def test_echoed_tools_name_auto_containers():
    response = {
        "tools": [
            {"type": "code_interpreter", "container": "cntr_a"},
            {"type": "code_interpreter", "container": {"type": "auto"}},
            {"type": "web_search"},
        ]
    }
    assert echoed_containers(response) == {"cntr_a"}


@pytest.mark.parametrize(
    ("path", "query", "context"),
    [
        ("/v1/responses", "", ("/v1", "")),
        ("/openai/v1/responses", "api-version=v&api-key=sk-x", ("/openai/v1", "api-version=v")),
        ("/gw/openai/responses/resp_1", "", ("/gw/openai", "")),
    ],
)  # fmt: skip
def test_the_containers_api_is_beside_the_responses_api(path, query, context):
    assert api_context(path, query) == context


@pytest.mark.parametrize(
    ("path", "deployment"),
    [
        ("/openai/deployments/chat-prod/chat/completions", "chat-prod"),
        ("/gateway/aoai/deployments/my%20dep/embeddings", "my dep"),
        ("/v1/chat/completions", None),
        ("/openai/deployments/", None),
    ],
)
def test_deployment_of_any_prefix(path: str, deployment: str | None):
    assert deployment_of(path) == deployment
