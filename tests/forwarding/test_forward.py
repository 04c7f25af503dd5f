"""forward.py without sockets: how the upstream URL and error bodies are built."""

from __future__ import annotations

import json

import pytest

from proxy.forwarding.exchange import Dispatcher
from proxy.forwarding.forward import Forwarder, error_response

# --- the Forwarder's surface -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstream", "target", "url"),
    [
        ("https://api.openai.com", "/v1/models?x=%2F", "https://api.openai.com/v1/models?x=%2F"),
        ("https://api.openai.com/", "/v1/models", "https://api.openai.com/v1/models"),
        ("http://h:8000/openai/", "/x?api-version=1", "http://h:8000/openai/x?api-version=1"),
        ("http://h/base", "/a%20b/c", "http://h/base/a%20b/c"),
    ],
)
def test_upstream_url(upstream: str, target: str, url: str) -> None:
    forwarder = Forwarder(upstream, Dispatcher([]))
    assert str(forwarder.upstream_url(target)) == url


def test_session_needs_start() -> None:
    with pytest.raises(AssertionError, match="start"):
        _ = Forwarder("http://h", Dispatcher([])).session


async def test_start_and_close_share_one_session() -> None:
    forwarder = Forwarder("http://h", Dispatcher([]))
    await forwarder.start()
    session = forwarder.session
    assert forwarder.session is session
    assert session.auto_decompress is False  # compressed bodies pass through compressed
    await forwarder.close()
    assert session.closed
    await forwarder.close()  # idempotent


def test_error_response_is_openai_shaped() -> None:
    resp = error_response(502, "the upstream could not be reached", "upstream_unreachable")
    assert resp.status == 502
    assert resp.content_type == "application/json"
    assert json.loads(resp.body) == {
        "error": {
            "message": "the upstream could not be reached",
            "type": "proxy_error",
            "param": None,
            "code": "upstream_unreachable",
        }
    }
