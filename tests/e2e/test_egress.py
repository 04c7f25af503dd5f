"""Corporate egress (issue 19, item 3): the upstream, the collector's fetches and the billing API
reached through a forward proxy on loopback (tests/connect_proxy.py: CONNECT tunnels and
absolute-URI forwarding, with Basic credentials), and TLS to an upstream whose certificate a
private test CA issued (trustme), trusted through `upstream_ca_file`. The official openai SDK is
the client. Proxy credentials never reach a log line, an error or /_proxy/health.

The CA comes from trustme, a test dependency: a CA and a leaf certificate in two calls, made
in memory for each test session, with nothing to keep on disk or let expire in the repository.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest
import trustme
from aiohttp import web

from proxy import cli
from proxy.app import BILLING
from proxy.settings import Settings
from tests.connect_proxy import ConnectProxy
from tests.e2e.conftest import client_for
from tests.e2e.fake_upstream import FakeUpstream
from tests.e2e.test_assistants import KEY, fetch_requests, finished_run, one_row, settings_for
from tests.fake_keys import fake_key
from tests.reconcile.scenario import ADMIN_KEY, fake_admin
from tests.waiting import free_port, wait_until

USER = "egress-user"
PASSWORD = "egr3ss-Pa55word"
MASKED = f"{USER}:***@"
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def _clean_environment_and_no_password_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """No proxy variable of the machine's leaks into a test; and after every test, no record
    of any logger at any level, traceback included, holds the proxy's password. The records
    are read as the code made them, before the log handler's own masking."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    caplog.set_level(logging.DEBUG)
    yield
    formatter = logging.Formatter()
    for record in caplog.records:
        text = formatter.format(record)
        assert PASSWORD not in text, text


class TlsUpstream(FakeUpstream):
    """The fake upstream on https://localhost, with a certificate of the test CA."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__()
        self._context = context

    async def start(self) -> str:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.url

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
async def tls_upstream(ca: trustme.CA) -> AsyncIterator[TlsUpstream]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    fake = TlsUpstream(context)
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def egress() -> AsyncIterator[ConnectProxy]:
    async with ConnectProxy(user=USER, password=PASSWORD) as proxy:
        yield proxy


async def chat(client: openai.AsyncOpenAI) -> str:
    done = await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    return done.choices[0].message.content or ""


async def health(proxy_url: str) -> tuple[dict, str]:
    async with aiohttp.ClientSession() as http, http.get(proxy_url + "/_proxy/health") as resp:
        text = await resp.text()
    return json.loads(text), text


# --- the upstream -----------------------------------------------------------------------------


async def test_upstream_proxy_tunnels_to_a_tls_upstream_of_a_private_ca(
    tls_upstream, egress, ca_file, start_proxy, caplog
) -> None:
    settings = Settings(
        upstream=tls_upstream.url, upstream_proxy=egress.url, upstream_ca_file=ca_file
    )
    proxy = await start_proxy(settings, accounting=False)
    async with client_for(proxy) as client:
        assert await chat(client)
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert [c async for c in stream]
        assert [m.id async for m in client.models.list()] == ["gpt-4o"]
    assert egress.tunnels > 0
    assert set(egress.targets) == {f"localhost:{tls_upstream.port}"}
    assert egress.refused == 0
    assert len(tls_upstream.requests) == 3
    said = [r.getMessage() for r in caplog.records if "through the egress proxy" in r.getMessage()]
    assert said == [
        f"the upstream https://localhost:{tls_upstream.port} is reached through the egress "
        f"proxy http://{MASKED}127.0.0.1:{egress.port} (from upstream_proxy): every request "
        "goes through aiohttp's ClientSession, which can use it"
    ]
    body, text = await health(proxy.url)
    assert body["upstream_reachability"]["via_proxy"] == f"http://{MASKED}127.0.0.1:{egress.port}"
    assert PASSWORD not in text


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy"])
async def test_https_proxy_from_the_environment(
    tls_upstream, egress, ca_file, start_proxy, monkeypatch, variable
) -> None:
    monkeypatch.setenv(variable, egress.url)
    proxy = await start_proxy(
        Settings(upstream=tls_upstream.url, upstream_ca_file=ca_file), accounting=False
    )
    async with client_for(proxy) as client:
        assert await chat(client)
    assert egress.tunnels == 1
    assert (await health(proxy.url))[0]["upstream_reachability"]["via_proxy"].startswith(
        f"http://{MASKED}"
    )


@pytest.mark.parametrize("named_by", ["environment", "setting"])
async def test_no_proxy_bypasses_the_proxy(
    tls_upstream, egress, ca_file, start_proxy, monkeypatch, named_by
) -> None:
    """Direct, so through the lean client: it trusts the private CA as well."""
    monkeypatch.setenv("NO_PROXY", "example.com,localhost")
    changes = {"upstream_proxy": egress.url} if named_by == "setting" else {}
    if named_by == "environment":
        monkeypatch.setenv("HTTPS_PROXY", egress.url)
    proxy = await start_proxy(
        Settings(upstream=tls_upstream.url, upstream_ca_file=ca_file, **changes),
        accounting=False,
    )
    async with client_for(proxy) as client:
        assert await chat(client)
    assert len(tls_upstream.requests) == 1
    assert egress.tunnels == egress.forwarded == egress.refused == 0
    assert (await health(proxy.url))[0]["upstream_reachability"]["via_proxy"] is None


@pytest.mark.parametrize("through", ["proxy", "direct"])
async def test_a_private_ca_is_trusted_only_through_upstream_ca_file(
    tls_upstream, egress, start_proxy, through
) -> None:
    changes = {"upstream_proxy": egress.url} if through == "proxy" else {}
    proxy = await start_proxy(Settings(upstream=tls_upstream.url, **changes), accounting=False)
    async with client_for(proxy) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await chat(client)
    assert caught.value.status_code == 502
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "upstream_unreachable"
    assert error["message"] == (
        "the upstream's TLS certificate could not be verified "
        "(ClientConnectorCertificateError); a private CA goes in upstream_ca_file"
    )
    assert tls_upstream.requests == []
    assert egress.tunnels == (1 if through == "proxy" else 0)


async def test_a_proxy_that_refuses_the_credentials_is_a_502(
    tls_upstream, egress, ca_file, start_proxy
) -> None:
    wrong = egress.url.replace(PASSWORD, "not-" + PASSWORD[::-1])
    for proxy_url in (egress.bare_url, wrong):
        proxy = await start_proxy(
            Settings(upstream=tls_upstream.url, upstream_proxy=proxy_url, upstream_ca_file=ca_file),
            accounting=False,
        )
        async with client_for(proxy) as client:
            with pytest.raises(openai.APIStatusError) as caught:
                await chat(client)
        assert caught.value.status_code == 502
        assert caught.value.body["message"] == (  # type: ignore[index]
            "the egress proxy refused the connection to the upstream (407)"
        )
    assert egress.refused == 2 and egress.tunnels == 0


# --- the collector and the billing API ------------------------------------------------------


async def test_the_collectors_fetches_go_through_the_proxy(
    upstream, egress, db_url, sm, start_proxy
) -> None:
    """Plain http upstream: the proxy forwards by absolute URI, so it sees each path. The
    collector runs in its child process, which makes its own pool."""
    upstream.require_beta = True
    settings = settings_for(upstream, db_url, upstream_proxy=egress.url)
    proxy = await start_proxy(settings, collector_process=True)
    async with client_for(proxy, KEY) as client:
        run = await finished_run(client)
        row = await one_row(sm, run.id)
    assert row["total_tokens"] > 0
    fetched = fetch_requests(upstream, run.id) + fetch_requests(upstream, run.id, "messages")
    assert fetched, "the collector fetched nothing"
    assert {r["path"] for r in fetched} <= {p.split("?")[0] for p in egress.paths}
    # Every request that reached the upstream came through the proxy, the client's included.
    assert egress.forwarded == len(upstream.requests)
    assert egress.tunnels == egress.refused == 0


@pytest.mark.parametrize("named_by", ["HTTP_PROXY", "upstream_proxy"])
async def test_billing_pull_goes_through_the_proxy(
    egress, db_url, monkeypatch, capsys, named_by
) -> None:
    monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
    if named_by == "HTTP_PROXY":
        monkeypatch.setenv("HTTP_PROXY", egress.url)
    else:
        monkeypatch.setenv("USAGE_PROXY_UPSTREAM_PROXY", egress.url)
    with fake_admin() as admin:
        monkeypatch.setenv("USAGE_PROXY_BILLING_URL", admin.url)
        pull = ["billing", "pull", "--database-url", db_url, "--since", "2026-11-01"]
        code = await asyncio.to_thread(cli.main, [*pull, "--until", "2026-12-01"])
        assert code == 0, capsys.readouterr().err
        requested = [path for path, _, _ in admin.requests]
    assert "/v1/organization/costs" in requested
    assert sorted(p.split("?")[0] for p in egress.paths) == sorted(requested)
    assert PASSWORD not in "".join(capsys.readouterr())


async def test_the_scheduled_billing_pull_goes_through_the_proxy(
    upstream, egress, db_url, start_proxy
) -> None:
    with fake_admin() as admin:
        settings = Settings(
            upstream=upstream.url,
            database_url=db_url,
            key_secret="k",
            billing_url=admin.url,
            billing_pull_interval=0.5,
            upstream_proxy=egress.url,
        )
        proxy = await start_proxy(settings, admin_key=ADMIN_KEY)
        await wait_until(lambda: proxy.app[BILLING].pulls >= 1, 20)
        requested = [path for path, _, _ in admin.requests]
    assert "/v1/organization/costs" in requested
    assert set(requested) <= {p.split("?")[0] for p in egress.paths}


async def test_bad_egress_settings_are_one_line_each(tmp_path: Path, monkeypatch) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    socks = f"socks5://{USER}:{PASSWORD}@127.0.0.1:1080"
    cases = [
        ({"USAGE_PROXY_UPSTREAM_PROXY": socks}, f"upstream_proxy: 'socks5://{MASKED}127.0.0.1"),
        ({"USAGE_PROXY_UPSTREAM_CA_FILE": str(tmp_path / "absent.pem")}, "cannot be read"),
        ({"USAGE_PROXY_UPSTREAM_CA_FILE": str(not_pem)}, "holds no PEM certificate"),
        ({"HTTPS_PROXY": socks}, f"HTTPS_PROXY: 'socks5://{MASKED}127.0.0.1"),
    ]
    for env, needle in cases:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--no-migrate",
            "--port",
            str(free_port()),
            "--database-url",
            f"sqlite+aiosqlite:///{tmp_path / 'usage.db'}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "USAGE_PROXY_KEY_SECRET": "x", **env},
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        lines = err.decode().strip().splitlines()
        assert proc.returncode == 2, (env, err.decode())
        assert len(lines) == 1 and needle in lines[0], (env, lines)
        assert PASSWORD not in err.decode() + out.decode()


async def test_serve_never_logs_the_proxy_password(
    tls_upstream, egress, ca_file, tmp_path: Path
) -> None:
    """`serve` as run in production (its collector in a child process, DEBUG logs): a request
    through the proxy, one with the proxy gone, and neither stdout nor stderr has the password."""
    port = free_port()
    # A file, not a pipe: DEBUG lines would fill a pipe nobody reads until the end.
    log_path = tmp_path / "serve.log"
    log = log_path.open("wb")
    env = {
        **os.environ,
        "USAGE_PROXY_KEY_SECRET": "x",
        "USAGE_PROXY_UPSTREAM_PROXY": egress.url,
        "USAGE_PROXY_UPSTREAM_CA_FILE": ca_file,
        "USAGE_PROXY_LOG_LEVEL": "DEBUG",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--port",
        str(port),
        "--upstream",
        tls_upstream.url,
        "--database-url",
        f"sqlite+aiosqlite:///{tmp_path / 'usage.db'}",
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
        env=env,
    )
    try:
        assert proc.stdout is not None
        await asyncio.wait_for(proc.stdout.readline(), 60)
        client = openai.AsyncOpenAI(
            api_key=fake_key("egress", "4321"),
            base_url=f"http://127.0.0.1:{port}/v1",
            max_retries=0,
        )
        async with client:
            assert await chat(client)
            assert egress.tunnels == 1
            await egress.__aexit__(None, None, None)  # the proxy goes away
            with pytest.raises(openai.APIStatusError) as caught:
                await chat(client)
            assert caught.value.status_code == 502
        _, text = await health(f"http://127.0.0.1:{port}")
        assert MASKED in text
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        logged = out.decode() + log_path.read_text()
        # Once: the collector process fetches through a session of its own, and says nothing.
        assert logged.count("through the egress proxy http://" + MASKED) == 1, logged
        assert PASSWORD not in logged + text
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
