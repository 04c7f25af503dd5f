"""The dashboard in a real browser: headless Chromium (Debian's chromium and chromium-driver)
driven by selenium, over data written by real traffic (the openai SDK through the proxy to the
fake upstream). The page's numbers are checked against `usage-proxy report`'s, the CSV link
against `report --format csv`, and screenshots of every page at 1280 and 390 px go to
tests/artifacts/ (gitignored). SQLite: the rollup's equality with the rows is proven on both
backends in tests/db/test_rollup.py.

Run alone with `pytest -m browser`. Selenium is synchronous and the proxy runs on this test's
event loop, so every browser call goes through a thread (`_b`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from proxy import cli
from proxy.db.engine import make_engine, make_sessionmaker, reading
from proxy.db.models import UsageRecord
from proxy.http.ui.session import COOKIE
from tests.e2e.conftest import RunningProxy, client_for, wait_for
from tests.e2e.fake_upstream import FakeUpstream
from tests.e2e.test_assistants import finished_run, settings_for
from tests.fake_keys import fake_key

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and DRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
    ),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
VIEWER = "viewer-t0ken-for-the-browser"
WIDTHS = (1280, 390)


def _chrome() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,900")
    # The system driver, so that selenium-manager never downloads one.
    return webdriver.Chrome(service=Service(str(DRIVER)), options=options)


async def _b(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def _report(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> str:
    code = await asyncio.to_thread(cli.main, ["report", "--database-url", url, *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


async def _shoot(driver: Any, name: str) -> None:
    """Screenshots of the page at both widths, the whole page tall."""
    ARTIFACTS.mkdir(exist_ok=True)
    for width in WIDTHS:
        await _b(driver.set_window_size, width, 900)
        height = await _b(driver.execute_script, "return document.documentElement.scrollHeight")
        await _b(driver.set_window_size, width, min(int(height) + 40, 8000))
        # Readable at this width: the page itself never scrolls sideways.
        overflow = await _b(
            driver.execute_script,
            "return document.documentElement.scrollWidth - window.innerWidth",
        )
        assert overflow <= 0, (name, width, overflow)
        await _b(driver.save_screenshot, str(ARTIFACTS / f"{name}-{width}.png"))
    await _b(driver.set_window_size, 1280, 900)


async def _traffic(proxy: RunningProxy, upstream: FakeUpstream) -> int:
    """Chat completions, embeddings, responses and an Assistants run for two teams; the number
    of usage rows they make."""
    red = client_for(
        proxy, fake_key("red", "1111"), default_headers={"X-Usage-Team": "red", "X-Usage-Tag": "ci"}
    )
    blue = client_for(proxy, fake_key("blue", "2222"), default_headers={"X-Usage-Team": "blue"})
    messages = [{"role": "user", "content": "Say hello to the dashboard."}]
    for _ in range(3):
        await red.chat.completions.create(model="gpt-4o", messages=messages)
    await red.embeddings.create(model="text-embedding-3-small", input="rollup")
    await red.responses.create(model="gpt-4o-mini", input="a response")
    for _ in range(2):
        await blue.chat.completions.create(model="gpt-4o-mini", messages=messages)
    await blue.responses.create(model="gpt-4o", input="another response")
    run = await finished_run(blue)
    assert run.status == "completed"
    return 9


async def test_the_dashboard_in_chromium(
    upstream: FakeUpstream, start_proxy, tmp_path: Path, _sqlite_template: Path, capsys
):
    db = tmp_path / "usage.db"
    shutil.copyfile(_sqlite_template, db)
    url = f"sqlite+aiosqlite:///{db}"
    settings = settings_for(upstream, url, viewer_token=VIEWER, allow_client_team=True)
    proxy = await start_proxy(settings)
    expected = await _traffic(proxy, upstream)
    engine = make_engine(url)
    sm = make_sessionmaker(engine)

    async def rows() -> int:
        async with reading(sm) as session:
            return await session.scalar(select(func.count()).select_from(UsageRecord))

    await wait_for(lambda: _equals(rows, expected), timeout=60)
    async with reading(sm) as session:
        run_id, run_cost = (
            await session.execute(
                select(UsageRecord.object_id, UsageRecord.cost_usd).where(
                    UsageRecord.kind == "assistants.run"
                )
            )
        ).one()
    await engine.dispose()
    month = dt.datetime.now(dt.UTC).strftime("%Y-%m")

    driver = await _b(_chrome)
    try:
        ui = proxy.url + "/_proxy/ui/"
        from selenium.webdriver.common.by import By

        def find(css: str) -> Any:
            return driver.find_element(By.CSS_SELECTOR, css)

        # Not logged in: the login form; a wrong token is refused.
        await _b(driver.get, ui)
        assert driver.current_url.endswith("/_proxy/ui/login")
        await _shoot(driver, "login")
        await _b(lambda: find("input[name=token]").send_keys("wrong-token"))
        await _b(lambda: find("form button[type=submit]").click())
        assert "That token is not valid." in await _b(lambda: find("p.error").text)
        assert driver.get_cookie(COOKIE) is None
        await _b(lambda: find("input[name=token]").send_keys(VIEWER))
        await _b(lambda: find("form button[type=submit]").click())
        assert driver.current_url == ui, driver.current_url
        cookie = driver.get_cookie(COOKIE)
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

        # Overview: the month's total and each team's cost are `report`'s.
        [total] = json.loads(
            await _report(capsys, url, "--month", month, "--group-by", "month", "--format", "json"),
            parse_float=Decimal,
        )
        teams = json.loads(
            await _report(capsys, url, "--month", month, "--group-by", "team", "--format", "json"),
            parse_float=Decimal,
        )
        assert {t["team"] for t in teams} == {"red", "blue"}
        shown = await _b(lambda: find("#total .money").get_attribute("data-value"))
        assert Decimal(shown) == Decimal(str(total["cost_usd"]))
        assert await _b(lambda: find("#total .money").text) == f"${Decimal(shown):,.2f}"
        for team in teams:
            cell = await _b(lambda t=team: find(f'tr[data-team="{t["team"]}"] td.money'))
            assert Decimal(cell.get_attribute("data-value")) == Decimal(str(team["cost_usd"]))
        assert "<svg" in driver.page_source and "Spend per team" in driver.page_source
        await _shoot(driver, "overview")

        # The team table's CSV link downloads what `report --format csv` prints.
        href = await _b(lambda: find("#teams a.csv").get_attribute("href"))
        want = await _report(capsys, url, "--month", month, "--group-by", "team", "--format", "csv")
        jar = {COOKIE: driver.get_cookie(COOKIE)["value"]}
        async with aiohttp.ClientSession(cookies=jar) as http, http.get(href) as resp:
            assert resp.status == 200
            assert await resp.text() == want

        # Overview -> team -> run, by clicking.
        await _b(lambda: find('tr[data-team="blue"] a').click())
        assert "/_proxy/ui/team/blue" in driver.current_url
        [blue] = json.loads(
            await _report(
                capsys,
                url,
                "--month",
                month,
                "--group-by",
                "month",
                "--team",
                "blue",
                "--format",
                "json",
            ),
            parse_float=Decimal,
        )
        shown = await _b(lambda: find("#total .money").get_attribute("data-value"))
        assert Decimal(shown) == Decimal(str(blue["cost_usd"]))
        badges = await _b(lambda: [b.text for b in driver.find_elements(By.CSS_SELECTOR, ".badge")])
        assert badges and set(badges) <= {"reported", "estimated", "partial"}
        # The runs table's CSV: every blue run of the month, as `report` gives them.
        href = await _b(lambda: find("#runs a.csv").get_attribute("href"))
        want = await _report(
            capsys, url, "--month", month, "--team", "blue", "--kind", "assistants.run",
            "--format", "csv",
        )  # fmt: skip
        async with aiohttp.ClientSession(cookies=jar) as http, http.get(href) as resp:
            assert await resp.text() == want and run_id in want
        await _shoot(driver, "team")
        await _b(lambda: find(f'#runs a[href$="{run_id}"]').click())
        assert driver.current_url.endswith(f"/_proxy/ui/run/{run_id}")
        shown = await _b(lambda: find("#run-cost").get_attribute("data-value"))
        assert Decimal(shown) == run_cost
        await _shoot(driver, "run")

        await _b(driver.get, ui + "reconciliation")
        assert "Recorded against billed" in driver.page_source
        await _shoot(driver, "reconciliation")
    finally:
        await _b(driver.quit)


async def _equals(count: Callable[[], Any], n: int) -> bool:
    return await count() == n
