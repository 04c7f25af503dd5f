"""`usage-proxy serve` as a user runs it: a real process, its start line, health, a request
forwarded to the fake upstream, a clean stop on SIGTERM, and one-line errors for bad settings."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from proxy.app import make_app, start_site
from proxy.errors import ConfigError
from proxy.settings import Settings
from tests.e2e.fake_upstream import FakeUpstream
from tests.waiting import free_port

_CLI = [sys.executable, "-m", "proxy"]


async def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 60.0):
    proc = await asyncio.create_subprocess_exec(
        *_CLI,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


async def test_serve_prints_where_it_listens_forwards_and_stops_on_sigterm(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    port = free_port()
    db = tmp_path / "usage.db"
    proc = await asyncio.create_subprocess_exec(
        *_CLI,
        "serve",
        "--port",
        str(port),
        "--upstream",
        upstream.url,
        "--database-url",
        f"sqlite+aiosqlite:///{db}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "USAGE_PROXY_KEY_SECRET": "s3cret-for-tests"},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert f"127.0.0.1:{port}" in line and upstream.url in line and str(db) in line, line
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/_proxy/health") as resp:
                health = await resp.json()
                assert resp.status == 200
            assert health["upstream"] == upstream.url
            assert health["database"]["ok"] is True
            async with http.get(
                f"http://127.0.0.1:{port}/v1/models",
                headers={"Authorization": "Bearer sk-test-serve-0000000000001111"},
            ) as resp:
                assert resp.status == 200
                assert (await resp.json())["data"][0]["id"] == "gpt-4o"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert proc.stderr is not None
        err = (await proc.stderr.read()).decode()
        # No admin token: the admin endpoints answer 404, and the log said why, once.
        off = (
            "INFO proxy: the admin endpoints /_proxy/usage, /_proxy/metrics and /_proxy/reconcile "
            "are off "
            "until USAGE_PROXY_ADMIN_TOKEN (or admin_token in the config file) is set"
        )
        assert err.count(off) == 1, err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_serve_keeps_proxying_with_the_database_down_and_masks_its_password(
    upstream: FakeUpstream,
) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *_CLI,
        "serve",
        "--no-migrate",
        "--port",
        str(port),
        "--upstream",
        upstream.url,
        "--database-url",
        "postgresql+asyncpg://user:hunter2@127.0.0.1:1/db",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "USAGE_PROXY_KEY_SECRET": "x"},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert "user:***@127.0.0.1:1/db" in line, line
        async with aiohttp.ClientSession() as http:
            async with http.get(
                f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer sk-x"}
            ) as resp:
                assert resp.status == 200
            async with http.get(f"http://127.0.0.1:{port}/_proxy/health") as resp:
                assert (await resp.json())["database"]["ok"] is False
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert proc.stderr is not None
        assert "hunter2" not in line + (await proc.stderr.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(
    ("args", "env", "config", "needle"),
    [
        (["--port", "70000"], {}, None, "port"),
        (["--port", "eighty"], {}, None, "port"),
        ([], {"USAGE_PROXY_PORT": "0"}, None, "port"),
        (["--upstream", "not a url"], {}, None, "upstream"),
        (["--upstream-timeout", "-1"], {}, None, "upstream_timeout"),
        ([], {}, 'colour = "blue"\n', "colour"),
        ([], {}, "port = [\n", "config"),
        (["--database-url", "nonsense"], {}, None, "database_url"),
    ],
)
async def test_bad_settings_give_one_line_and_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], config: str | None, needle: str
) -> None:
    if config is not None:
        path = tmp_path / "proxy.toml"
        path.write_text(config)
        args = [*args, "--config", str(path)]
    code, out, err = await _run("serve", "--no-migrate", *args, env=env)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (out, err)
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err


async def test_report_json_after_serve_lists_rows(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'usage.db'}"
    code, _, err = await _run("migrate", "--database-url", url)
    assert code == 0, err
    code, out, err = await _run("report", "--format", "json", "--database-url", url)
    assert code == 0, err
    assert json.loads(out) == []


async def test_a_port_in_use_is_one_line_before_the_database_is_touched(tmp_path: Path) -> None:
    db = tmp_path / "usage.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await _run(
            *("serve", "--port", str(port), "--database-url", f"sqlite+aiosqlite:///{db}"),
            env={"USAGE_PROXY_LOGLEVEL": "DEBUG"},  # misspelled: warned about, first
        )
    assert code == 2, (out, err)
    warning, error = err.splitlines()
    assert warning.endswith(
        "WARNING proxy.cli: environment variable USAGE_PROXY_LOGLEVEL is not a setting and is"
        " ignored; did you mean USAGE_PROXY_LOG_LEVEL?"
    ), warning
    assert error == (
        f"usage-proxy: error: port: cannot listen on 127.0.0.1:{port}: Address already in use"
        " (another process listens there: stop it, or choose another --port)"
    )
    assert not db.exists()  # checked before migrating


async def test_a_port_taken_after_the_check_closes_what_start_up_opened(
    upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """The race the check cannot close: the bind fails after the app started its upstream
    pool, which is closed again instead of being reported as "Unclosed client session"."""
    app = make_app(Settings(upstream=upstream.url), accounting=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            await start_site(app, "127.0.0.1", port)
    del app
    gc.collect()
    await asyncio.sleep(0)  # let the loop report anything left unclosed
    assert "Unclosed" not in caplog.text
