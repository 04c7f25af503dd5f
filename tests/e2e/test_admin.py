"""The /_proxy/ admin endpoints through a real in-process proxy: who may call them, what usage
and metrics answer, and that nothing of them ever reaches the upstream."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from proxy import cli
from proxy.accounting.usage import UsageRow
from proxy.app import METRICS
from proxy.db.engine import make_engine, make_sessionmaker
from proxy.db.jobs import NewJob, enqueue
from proxy.db.run_usage import record_usage
from proxy.metrics import Metrics
from proxy.settings import Settings
from tests.e2e.conftest import RunningProxy, client_for, wait_for
from tests.e2e.fake_upstream import FakeUpstream
from tests.fake_keys import fake_key

TOKEN = "admin-t0ken-for-tests-4f9a"
KEY = fake_key("admin", "5678")
FINGERPRINT = "f" * 64
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _row(i: int, team: str, when: dt.datetime, cost: str, model: str = "gpt-4o") -> UsageRow:
    return UsageRow(
        kind="assistants.run",
        object_id=f"run_seed_{i}",
        occurred_at=when,
        usage_source="estimated",
        team=team,
        model=model,
        key_fingerprint=FINGERPRINT,
        key_hint="sk-...5678",
        prompt_tokens=1000,
        completion_tokens=47,
        total_tokens=1047,
        cost_usd=Decimal(cost),
    )


SEED = [
    _row(0, "red", dt.datetime(2026, 11, 1, tzinfo=dt.UTC), "0.1"),
    _row(1, "red", dt.datetime(2026, 11, 2, tzinfo=dt.UTC), "0.2"),
    _row(
        2, "blue", dt.datetime(2026, 11, 30, 23, 59, tzinfo=dt.UTC), "0.0000000001", "gpt-4o-mini"
    ),
    _row(3, "red", dt.datetime(2026, 12, 1, tzinfo=dt.UTC), "5"),
]


async def _seed(url: str) -> None:
    engine = make_engine(url)
    try:
        sm = make_sessionmaker(engine)
        for row in SEED:
            await record_usage(sm, row)
        # A job for a key this proxy has never seen: it stays pending.
        await enqueue(
            sm,
            NewJob(
                object_id="run_waiting",
                thread_id="thread_waiting",
                api_prefix="/v1",
                object_json="{}",
                key_fingerprint=FINGERPRINT,
            ),
        )
    finally:
        await engine.dispose()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def admin_proxy(
    db_url: str, upstream: FakeUpstream, start_proxy: Callable[..., Awaitable[RunningProxy]]
) -> RunningProxy:
    await _seed(db_url)
    settings = Settings(
        upstream=upstream.url, database_url=db_url, admin_token=TOKEN, key_secret="k"
    )
    return await start_proxy(settings)


async def _get(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, str, aiohttp.typedefs.LooseHeaders]:
    async with http.get(url, headers=headers or {}) as resp:
        return resp.status, await resp.text(), resp.headers


def _total(metrics: Metrics, sample: str) -> float:
    return sum(s.value for m in metrics.registry.collect() for s in m.samples if s.name == sample)


def _assert_nothing_reached(upstream: FakeUpstream) -> None:
    for seen in upstream.requests:
        assert not seen["path"].startswith("/_proxy"), seen["path"]
        assert all(TOKEN not in value for value in seen["headers"].values()), seen["headers"]


# --- who may call ----------------------------------------------------------------------------


@pytest.mark.parametrize("accounting", [True, False], ids=["accounting", "bare"])
async def test_without_a_token_the_admin_endpoints_do_not_exist(
    upstream: FakeUpstream, start_proxy, http, tmp_path, accounting: bool
) -> None:
    settings = Settings(upstream=upstream.url, database_url=f"sqlite:///{tmp_path / 'u.db'}")
    proxy = await start_proxy(settings, accounting=accounting)
    for path in ("/_proxy/usage", "/_proxy/metrics"):
        for headers in ({}, {"Authorization": "Bearer "}, AUTH):
            status, body, _ = await _get(http, proxy.url + path, headers)
            assert status == 404, (path, headers)
            assert json.loads(body)["error"]["code"] == "not_found"
    status, _, _ = await _get(http, proxy.url + "/_proxy/health")
    assert status == 200
    _assert_nothing_reached(upstream)


@pytest.mark.parametrize(
    "path",
    [
        "/_Proxy/metrics",
        "/_PROXY/usage",
        "/_proxy/Metrics",
        "/%5Fproxy/metrics",
        "/%5fPROXY/metrics",
        "/%255Fproxy/metrics",
        "/_proxy;x/metrics",
        "/_proxy%2Fmetrics",
        "/_Proxy",
        "/_pRoXy/",
    ],
)
async def test_the_reserved_prefix_in_any_case_or_encoding_is_never_forwarded(
    upstream: FakeUpstream, start_proxy, http, path: str
) -> None:
    proxy = await start_proxy(Settings(upstream=upstream.url, admin_token=TOKEN), accounting=False)
    url = URL(proxy.url + path, encoded=True)
    async with http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        # aiohttp routes a percent-encoded spelling as decoded: the endpoint itself answers.
        if resp.status != 200:
            assert resp.status == 404, await resp.text()
            assert (await resp.json())["error"]["code"] == "not_found"
    assert upstream.requests == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"api-key": TOKEN},
    ],
    ids=["none", "wrong", "longer", "basic", "no-scheme", "api-key"],
)
@pytest.mark.parametrize("path", ["/_proxy/usage", "/_proxy/metrics"])
async def test_a_wrong_or_missing_token_gets_401(
    admin_proxy: RunningProxy, upstream: FakeUpstream, http, path: str, headers: dict[str, str]
) -> None:
    # A bad parameter too: authentication is decided before any parameter is looked at.
    status, body, resp_headers = await _get(http, admin_proxy.url + path + "?since=x", headers)
    assert status == 401
    assert json.loads(body)["error"]["code"] == "invalid_admin_token"
    assert resp_headers["WWW-Authenticate"].startswith("Bearer")
    _assert_nothing_reached(upstream)


async def test_usage_needs_accounting_but_metrics_do_not(
    upstream: FakeUpstream, start_proxy, http
) -> None:
    proxy = await start_proxy(Settings(upstream=upstream.url, admin_token=TOKEN), accounting=False)
    assert (await _get(http, proxy.url + "/_proxy/usage", AUTH))[0] == 404
    status, body, _ = await _get(http, proxy.url + "/_proxy/metrics", AUTH)
    assert status == 200 and "usage_proxy_requests_total" in body


# --- usage -----------------------------------------------------------------------------------


async def test_usage_json_lists_every_event(admin_proxy: RunningProxy, http) -> None:
    status, body, headers = await _get(http, admin_proxy.url + "/_proxy/usage", AUTH)
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/json")
    events = json.loads(body, parse_float=Decimal)
    assert [e["object_id"] for e in events] == [r.object_id for r in SEED]
    assert sum(e["cost_usd"] for e in events) == Decimal("5.3000000001")
    assert events[2]["occurred_at"] == "2026-11-30T23:59:00Z"


async def test_usage_csv_grouped_by_team_and_month(admin_proxy: RunningProxy, http) -> None:
    url = admin_proxy.url + "/_proxy/usage?group_by=team,month&format=csv"
    status, body, headers = await _get(http, url, AUTH)
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/csv")
    assert body.splitlines() == [
        "team,month,events,prompt_tokens,completion_tokens,total_tokens,"
        "code_interpreter_sessions,cost_usd,unpriced_events,unpriced_tokens,priced",
        "blue,2026-11,1,1000,47,1047,0,0.0000000001,0,0,true",
        "red,2026-11,2,2000,94,2094,0,0.3,0,0,true",
        "red,2026-12,1,1000,47,1047,0,5,0,0,true",
    ]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("since=2026-11-02&until=2026-12-01", ["run_seed_1", "run_seed_2"]),
        ("since=2026-11-02T00:00:00.000001Z", ["run_seed_2", "run_seed_3"]),
        ("until=2026-11-30T23:59:00%2B00:00", ["run_seed_0", "run_seed_1"]),
        ("month=2026-12", ["run_seed_3"]),
        ("month=2026-11&team=blue", ["run_seed_2"]),
        ("model=gpt-4o&kind=assistants.run&until=2026-11-02", ["run_seed_0"]),
        ("month=2025-01", []),
    ],
)
async def test_usage_since_inclusive_until_exclusive_and_filters(
    admin_proxy: RunningProxy, http, query: str, expected: list[str]
) -> None:
    status, body, _ = await _get(http, f"{admin_proxy.url}/_proxy/usage?{query}", AUTH)
    assert status == 200, body
    assert [e["object_id"] for e in json.loads(body)] == expected


async def test_usage_answers_exactly_what_the_cli_report_prints(
    admin_proxy: RunningProxy, db_url: str, http, capsys
) -> None:
    url = admin_proxy.url + "/_proxy/usage?group_by=key,model,day&since=2026-11-02&format=json"
    status, body, _ = await _get(http, url, AUTH)
    argv = ["report", "--database-url", db_url, "--group-by", "key,model,day"]
    argv += ["--since", "2026-11-02", "--format", "json"]
    code = await asyncio.to_thread(cli.main, argv)
    out, err = capsys.readouterr()
    assert (status, code) == (200, 0), err
    assert body == out


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("since=yesterday", "since"),
        ("until=2026-02-30", "until"),
        ("month=2026-13", "month"),
        ("month=2026-11&since=2026-11-02", "month"),
        ("since=2026-11-02&until=2026-11-02", "since"),
        ("group_by=team,colour", "group_by"),
        ("group_by=,", "group_by"),
        ("format=xml", "format"),
        ("format=table", "format"),
        ("group-by=team", "group-by"),
        ("team=red&team=blue", "team"),
    ],
)
async def test_bad_parameters_get_400_naming_the_parameter(
    admin_proxy: RunningProxy, http, query: str, param: str
) -> None:
    status, body, _ = await _get(http, f"{admin_proxy.url}/_proxy/usage?{query}", AUTH)
    assert status == 400, body
    error = json.loads(body)["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    assert param in error["message"]


# --- metrics ---------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_metrics_count_requests_and_recorded_runs_without_keys_or_run_ids(
    admin_proxy: RunningProxy, upstream: FakeUpstream, http
) -> None:
    client = client_for(admin_proxy, key=KEY)
    assistant = await client.beta.assistants.create(model="gpt-4o", instructions="Be brief.")
    thread = await client.beta.threads.create(
        messages=[{"role": "user", "content": "What is 2+2?"}]
    )
    run = await client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=5
    )
    assert run.status == "completed"
    await client.models.list()
    await client.close()
    metrics = admin_proxy.app[METRICS]
    await wait_for(lambda: _total(metrics, "usage_proxy_runs_recorded_total") == 1)

    status, text, headers = await _get(http, admin_proxy.url + "/_proxy/metrics", AUTH)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    for name in (
        "usage_proxy_requests_total",
        "usage_proxy_upstream_latency_seconds_bucket",
        "usage_proxy_runs_recorded_total",
        "usage_proxy_pending_jobs",
        "usage_proxy_collection_failures",
        "usage_proxy_tokens_total",
        "usage_proxy_cost_usd_total",
    ):
        assert name in text, name
    assert 'usage_proxy_requests_total{method="GET",status="200"}' in text
    assert 'usage_proxy_requests_total{method="POST",status="200"}' in text
    assert 'team="unassigned"' in text and 'model="gpt-4o"' in text
    assert "usage_proxy_pending_jobs 1.0" in text
    assert _total(metrics, "usage_proxy_upstream_latency_seconds_count") >= 5
    for secret in (KEY, run.id, thread.id, assistant.id, TOKEN):
        assert secret not in text, secret
    # The key's last four characters can occur by chance inside a sample's number (a
    # _created timestamp did): look for them where text goes, in names and label values.
    words = [
        part
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        for part in (sample.name, *sample.labels.values())
    ]
    assert "gpt-4o" in words  # label values are read
    assert not [w for w in words if KEY[-4:] in w]
    _assert_nothing_reached(upstream)


async def test_metrics_count_an_unreachable_upstream_as_status_0(
    start_proxy, http, tmp_path
) -> None:
    settings = Settings(upstream="http://127.0.0.1:1", admin_token=TOKEN)
    proxy = await start_proxy(settings, accounting=False)
    status, _, _ = await _get(http, proxy.url + "/v1/models")
    assert status == 502
    metrics = proxy.app[METRICS]
    sample = ("usage_proxy_requests_total", {"method": "GET", "status": "0"})
    await wait_for(lambda: metrics.registry.get_sample_value(*sample) == 1)
    _, text, _ = await _get(http, proxy.url + "/_proxy/metrics", AUTH)
    assert 'usage_proxy_requests_total{method="GET",status="0"} 1.0' in text


async def test_metrics_keep_the_last_pending_count_while_the_database_is_down(
    upstream: FakeUpstream, start_proxy, http
) -> None:
    settings = Settings(
        upstream=upstream.url,
        admin_token=TOKEN,
        key_secret="k",
        database_url="postgresql+asyncpg://nobody:pw@127.0.0.1:1/none",
    )
    proxy = await start_proxy(settings)
    proxy.app[METRICS].pending_jobs.set(7)
    status, text, _ = await _get(http, proxy.url + "/_proxy/metrics", AUTH)
    assert status == 200
    assert "usage_proxy_pending_jobs 7.0" in text
    status, body, _ = await _get(http, proxy.url + "/_proxy/usage", AUTH)
    assert status == 503 and json.loads(body)["error"]["code"] == "database_unavailable"
