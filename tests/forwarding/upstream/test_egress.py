"""proxy/forwarding/upstream/egress.py: which proxy a URL goes through, as aiohttp's trust_env
would pick it (the e2e proof through a real CONNECT proxy is tests/e2e/test_egress.py)."""

from __future__ import annotations

import ssl

import pytest
import trustme
from yarl import URL

from proxy.errors import ConfigError
from proxy.forwarding.upstream.egress import Egress
from proxy.redact import redact

HTTPS = URL("https://api.example.com")
HTTP = URL("http://billing.example.com:8080/v1")


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


def routed(egress: Egress, url: URL) -> tuple[str, str] | None:
    route = egress.route(url)
    return None if route is None else (route.shown, route.source)


def test_nothing_set_is_direct() -> None:
    assert routed(Egress(), HTTPS) is None and routed(Egress(), HTTP) is None


def test_each_scheme_takes_its_own_variable(monkeypatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://tls-proxy:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://plain-proxy:3128")
    assert routed(Egress(), HTTPS) == ("http://tls-proxy:3128", "HTTPS_PROXY")
    assert routed(Egress(), HTTP) == ("http://plain-proxy:3128", "HTTP_PROXY")


def test_lower_case_wins_as_in_urllib(monkeypatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://upper:1")
    monkeypatch.setenv("https_proxy", "http://lower:2")
    assert routed(Egress(), HTTPS) == ("http://lower:2", "https_proxy")


def test_the_setting_wins_over_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://env:1")
    assert routed(Egress("https://set:2"), HTTPS) == ("https://set:2", "upstream_proxy")
    assert routed(Egress("https://set:2"), HTTP) == ("https://set:2", "upstream_proxy")


@pytest.mark.parametrize("no_proxy", ["api.example.com", ".example.com", "*", "x.org, example.com"])
def test_no_proxy_exempts_a_host_from_both(monkeypatch, no_proxy: str) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://env:1")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    assert routed(Egress(), HTTPS) is None
    assert routed(Egress("http://set:2"), HTTPS) is None


def test_no_proxy_for_another_host_changes_nothing(monkeypatch) -> None:
    monkeypatch.setenv("NO_PROXY", "internal.corp,10.0.0.1")
    assert routed(Egress("http://set:2"), HTTPS) == ("http://set:2", "upstream_proxy")


def test_http_proxy_is_ignored_in_a_cgi_request(monkeypatch) -> None:
    # httpoxy: a client's Proxy header arrives as HTTP_PROXY there; urllib and aiohttp skip it.
    monkeypatch.setenv("REQUEST_METHOD", "GET")
    monkeypatch.setenv("HTTP_PROXY", "http://attacker:1")
    assert routed(Egress(), HTTP) is None


def test_a_bare_host_and_port_is_an_http_proxy(monkeypatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "proxy.corp:3128")
    assert routed(Egress(), HTTPS) == ("http://proxy.corp:3128", "HTTPS_PROXY")


def test_credentials_are_kept_for_aiohttp_and_masked_when_shown(monkeypatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://alice:s3cret@proxy:3128")
    route = Egress().route(HTTPS)
    assert route is not None
    assert route.proxy.user == "alice" and route.proxy.password == "s3cret"
    assert route.shown == "http://alice:***@proxy:3128"
    assert "s3cret" not in repr(route) and "s3cret" not in repr(Egress("http://a:s3cret@p:1"))


@pytest.mark.parametrize(
    "value", ["socks5://alice:s3cret@proxy:1080", "http://alice:s3cret@p:1/x", "http://p:x"]
)
def test_an_unusable_proxy_in_the_environment_is_refused_by_name(monkeypatch, value) -> None:
    monkeypatch.setenv("HTTPS_PROXY", value)
    with pytest.raises(ConfigError) as caught:
        Egress().route(HTTPS)
    assert str(caught.value).startswith("HTTPS_PROXY: ")
    assert "s3cret" not in str(caught.value)


def test_the_ca_file_adds_to_the_system_roots(tmp_path) -> None:
    ca = trustme.CA()
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    assert Egress().ssl_context() is None
    context = Egress(ca_file=str(path)).ssl_context()
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED
    system = ssl.create_default_context().cert_store_stats()["x509_ca"]
    assert context.cert_store_stats()["x509_ca"] == system + 1


def test_redact_masks_a_url_password_wherever_it_stands() -> None:
    text = "ClientHttpProxyError(url=URL('http://alice:s3cr%40t@proxy:3128')) via https://:pw@h/"
    assert redact(text) == (
        "ClientHttpProxyError(url=URL('http://alice:***@proxy:3128')) via https://:***@h/"
    )
    assert redact("postgresql://user@host/db http://u@h") == "postgresql://user@host/db http://u@h"
