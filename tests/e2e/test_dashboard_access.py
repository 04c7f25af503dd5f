"""Who may see the dashboard, and the headers it sends: through a real proxy on a real port,
on both backends."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from proxy.http.ui.session import COOKIE, SESSION_SECONDS, Access
from proxy.settings import Settings
from tests.e2e.conftest import RunningProxy
from tests.e2e.fake_upstream import FakeUpstream

ADMIN = "admin-t0ken-for-ui-tests-1"
VIEWER = "viewer-t0ken-for-ui-tests-2"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # A jar that keeps cookies for 127.0.0.1 (an IP address), as a browser does.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


@pytest.fixture
async def ui(db_url: str, upstream: FakeUpstream, start_proxy) -> RunningProxy:
    settings = Settings(
        upstream=upstream.url,
        database_url=db_url,
        key_secret="k",
        admin_token=ADMIN,
        viewer_token=VIEWER,
    )
    return await start_proxy(settings)


async def _login(http: aiohttp.ClientSession, proxy: RunningProxy, token: str):
    async with http.get(proxy.url + "/_proxy/ui/login") as resp:
        assert resp.status == 200
        form = await resp.text()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    return await http.post(
        proxy.url + "/_proxy/ui/login",
        data={"csrf_token": csrf, "token": token},
        allow_redirects=False,
    )


async def test_without_any_token_the_dashboard_does_not_exist(
    upstream: FakeUpstream, start_proxy, http, tmp_path
):
    settings = Settings(upstream=upstream.url, database_url=f"sqlite:///{tmp_path / 'u.db'}")
    proxy = await start_proxy(settings)
    for path in ("/_proxy/ui/", "/_proxy/ui/login", "/_proxy/ui/download?format=csv"):
        async with http.get(proxy.url + path) as resp:
            assert resp.status == 404, path
    assert not upstream.requests


async def test_a_viewer_only_proxy_has_the_dashboard_and_usage_but_no_metrics(
    upstream: FakeUpstream, start_proxy, http, db_url
):
    settings = Settings(upstream=upstream.url, database_url=db_url, viewer_token=VIEWER)
    proxy = await start_proxy(settings)
    auth = {"Authorization": f"Bearer {VIEWER}"}
    for path, status in [("/_proxy/ui/", 200), ("/_proxy/usage", 200), ("/_proxy/metrics", 404)]:
        async with http.get(proxy.url + path, headers=auth) as resp:
            assert resp.status == status, path
    # An empty bearer token must not match the unset admin token.
    async with http.get(proxy.url + "/_proxy/usage", headers={"Authorization": "Bearer "}) as r:
        assert r.status == 401


@pytest.mark.parametrize("token", [ADMIN, VIEWER])
async def test_bearer_tokens_open_pages_and_usage(ui, http, token):
    auth = {"Authorization": f"Bearer {token}"}
    async with http.get(ui.url + "/_proxy/ui/", headers=auth) as resp:
        assert resp.status == 200
        assert "Spend in" in await resp.text()
    async with http.get(ui.url + "/_proxy/usage?group_by=team", headers=auth) as resp:
        assert resp.status == 200
    async with http.get(ui.url + "/_proxy/metrics", headers=auth) as resp:
        assert resp.status == (200 if token == ADMIN else 401)


async def test_wrong_tokens_are_refused(ui, http):
    async with http.get(ui.url + "/_proxy/ui/", headers={"Authorization": "Bearer nope"}) as r:
        assert r.status == 401
    async with http.get(ui.url + "/_proxy/ui/", allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == "/_proxy/ui/login"
    resp = await _login(http, ui, "not-the-token")
    assert resp.status == 401 and "not valid" in await resp.text()
    assert COOKIE not in {c.key for c in http.cookie_jar}


async def test_login_sets_a_strict_httponly_expiring_cookie_that_opens_pages(ui, http):
    resp = await _login(http, ui, VIEWER)
    assert resp.status == 303
    header = next(h for h in resp.headers.getall("Set-Cookie") if h.startswith(COOKIE))
    assert "HttpOnly" in header and "SameSite=Strict" in header
    assert f"Max-Age={SESSION_SECONDS}" in header
    assert "Secure" not in header  # plain HTTP here; request.secure decides
    assert VIEWER not in header
    async with http.get(ui.url + "/_proxy/ui/") as page:
        assert page.status == 200
        assert page.headers["X-Frame-Options"] == "DENY"
        assert page.headers["Cache-Control"] == "no-store"
        csp = page.headers["Content-Security-Policy"]
        assert "script-src" not in csp and "default-src 'none'" in csp
        html = await page.text()
    assert "<script" not in html and " style=" not in html
    # Log out: the form's CSRF token is required.
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    async with http.post(ui.url + "/_proxy/ui/logout", data={"csrf_token": "x"}) as r:
        assert r.status == 403
    async with http.post(
        ui.url + "/_proxy/ui/logout", data={"csrf_token": csrf}, allow_redirects=False
    ) as r:
        assert r.status == 303


async def test_login_without_the_forms_csrf_cookie_is_refused(ui, http):
    form = {"csrf_token": "a" * 43, "token": ADMIN}
    # A fresh session: no cookie from the form.
    async with (
        aiohttp.ClientSession() as fresh,
        fresh.post(ui.url + "/_proxy/ui/login", data=form) as r,
    ):
        assert r.status == 403


async def _secret() -> bytes:
    return b"s" * 32


@pytest.mark.parametrize("case", ["expired", "tampered", "other_token", "good"])
async def test_session_cookies_are_checked(case):
    access = Access(ADMIN, VIEWER, _secret)
    now = time.time()
    value = await access.cookie_value("viewer", now)
    if case == "expired":
        assert await access.cookie_role(value, now + SESSION_SECONDS + 1) is None
    elif case == "tampered":
        payload, mac = value.split(".")
        forged = await Access(ADMIN, VIEWER, _secret).cookie_value("admin", now)
        assert await access.cookie_role(forged.split(".")[0] + "." + mac, now) is None
        assert await access.cookie_role(payload + "." + mac[:-2] + "AA", now) is None
    elif case == "other_token":
        # A changed viewer token ends the sessions opened with the old one.
        assert await Access(ADMIN, "new-viewer", _secret).cookie_role(value, now) is None
    else:
        assert await access.cookie_role(value, now) == "viewer"


@pytest.mark.parametrize("fmt", ["csv", "focus"])
async def test_download_links_give_what_report_gives(ui, http, sm, fmt):
    import datetime as dt
    from decimal import Decimal

    from proxy.db.usage import record_rows
    from proxy.reports.query import ReportQuery, parse_month
    from proxy.reports.run import run_report
    from tests.db.rows import chat

    when = dt.datetime(2026, 11, 3, 12, tzinfo=dt.UTC)
    rows = [chat(f"c{n}", occurred_at=when, team=("red", "blue")[n % 2]) for n in range(6)]
    rows.append(chat("unpriced", occurred_at=when, cost_usd=None, model="acme-1"))
    rows.append(chat("december", occurred_at=when.replace(month=12), cost_usd=Decimal("9")))
    await record_rows(sm, rows)
    auth = {"Authorization": f"Bearer {VIEWER}"}
    since, until = parse_month("2026-11")
    for group_by in ((), ("team",), ("team", "model")):
        params = {"month": "2026-11", "format": fmt}
        if group_by:
            params["group_by"] = ",".join(group_by)
        async with http.get(ui.url + "/_proxy/ui/download", params=params, headers=auth) as r:
            assert r.status == 200
            body = await r.text()
        want = await run_report(sm, ReportQuery(since, until, group_by, fmt=fmt))
        assert body == want and "december" not in body
