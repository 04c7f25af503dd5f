"""AdminApi against the fake admin API on a real socket: paging, the query it sends, retries
on 429 and 5xx with Retry-After, and a refused key."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from proxy.reconcile.admin_api import AdminApi, AdminApiError, AdminKeyRefused
from proxy.reconcile.billed import parse_costs
from tests.reconcile.scenario import ADMIN_KEY, fake_admin

NOV1 = 1793491200  # 2026-11-01T00:00Z
NOV3 = NOV1 + 2 * 86400


@pytest.fixture
def admin():
    with fake_admin() as fake:
        yield fake


async def test_costs_follow_pages_with_the_sdk_query(admin) -> None:
    async with AdminApi(admin.url, ADMIN_KEY) as api:
        pages = await api.costs(NOV1, NOV3)
    assert len(pages) == 2, "one bucket per page: two days, two pages"
    first, second = (q for path, q, _ in admin.requests if path == "/v1/organization/costs")
    assert [v for k, v in first if k == "group_by[]"] == ["project_id", "line_item", "api_key_id"]
    assert ("bucket_width", "1d") in first
    assert ("start_time", str(NOV1)) in first and ("end_time", str(NOV3)) in first
    assert ("page", "1") in second
    rows = parse_costs(pages)
    assert {r.day for r in rows} == {"2026-11-01", "2026-11-02"}
    exact = [r.amount for r in rows if r.project == "proj_red" and r.day == "2026-11-02"]
    assert exact == [Decimal("0.1000000001")], "amounts are read as exact decimals"


async def test_lists_follow_after(admin) -> None:
    async with AdminApi(admin.url, ADMIN_KEY) as api:
        projects = await api.projects()
        keys = await api.api_keys("proj_blue")
    assert [p["id"] for p in projects] == ["proj_blue", "proj_ghost", "proj_red"]
    assert [k["id"] for k in keys] == ["key_blue1", "key_blue2"]
    afters = [dict(q).get("after") for path, q, _ in admin.requests if path.endswith("api_keys")]
    assert afters == [None, "key_blue1"]


async def test_429_waits_for_retry_after(admin) -> None:
    admin.failures = [(429, "1")]
    async with AdminApi(admin.url, ADMIN_KEY, backoff=0.01) as api:
        pages = await api.costs(NOV1, NOV3)
    assert len(pages) == 2
    times = [t for path, _, t in admin.requests if path == "/v1/organization/costs"]
    assert times[1] - times[0] >= 0.95, "Retry-After: 1 was honoured, not the 10 ms backoff"


async def test_5xx_backs_off_then_gives_up(admin) -> None:
    admin.failures = [(503, None)] * 3
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async with AdminApi(admin.url, ADMIN_KEY, attempts=3, backoff=0.5, sleep=sleep) as api:
        with pytest.raises(AdminApiError, match="503 after 3 attempts"):
            await api.costs(NOV1, NOV3)
    assert waits == [0.5, 1.0]


async def test_refused_key_is_not_retried_and_not_shown(admin) -> None:
    wrong = ADMIN_KEY[:-4] + "zzzz"
    started = time.monotonic()
    async with AdminApi(admin.url, wrong) as api:
        with pytest.raises(AdminKeyRefused) as caught:
            await api.projects()
    assert time.monotonic() - started < 5
    assert len(admin.requests) == 1
    assert "401" in str(caught.value) and wrong not in str(caught.value)
    assert wrong not in repr(api)
