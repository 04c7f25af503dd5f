from __future__ import annotations

import asyncio
import sys
import types
from pathlib import Path

from proxy.db.migrate import current, head
from proxy.settings import Settings
from tests.cli.runner import run
from tests.fake_keys import fake_key

BIN = Path(sys.executable).parent / "usage-proxy"
KEY = fake_key("cli", "9876")


def test_serve_has_a_flag_per_setting_and_none_for_secrets(capsys):
    code, out, _ = run(capsys, "serve", "--help")
    assert code == 0
    for flag in ["--host", "--port", "--upstream", "--database-url", "--upstream-timeout"]:
        assert flag in out
    for flag in ["--config", "--log-format", "--no-migrate"]:
        assert flag in out
    assert "--key-secret" not in out and "--admin-token" not in out


def test_serve_migrates_then_serves_with_the_merged_settings(
    capsys, monkeypatch, empty_db_url: str
):
    served: list[tuple[Settings, str | None]] = []
    fake_app = types.ModuleType("proxy.app")
    fake_app.serve = lambda settings: served.append(
        (settings, asyncio.run(current(settings.database_url)))
    )
    monkeypatch.setitem(sys.modules, "proxy.app", fake_app)
    monkeypatch.setenv("USAGE_PROXY_PORT", "9000")
    monkeypatch.setenv("USAGE_PROXY_HOST", "0.0.0.0")
    code, _, err = run(capsys, "serve", "--database-url", empty_db_url, "--port", "9100")
    assert code == 0, err
    [(settings, revision)] = served
    assert (settings.port, settings.host, settings.database_url) == (9100, "0.0.0.0", empty_db_url)
    assert revision == head()


def test_serve_no_migrate_leaves_the_database_alone(capsys, monkeypatch, empty_db_url: str):
    served: list[Settings] = []
    fake_app = types.ModuleType("proxy.app")
    fake_app.serve = served.append
    monkeypatch.setitem(sys.modules, "proxy.app", fake_app)
    code, _, err = run(capsys, "serve", "--database-url", empty_db_url, "--no-migrate")
    assert code == 0, err
    assert served[0].migrate is False
    assert asyncio.run(current(empty_db_url)) is None
