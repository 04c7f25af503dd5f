"""forward.py without sockets: which headers cross, which targets are refused, and how the
upstream URL and error bodies are built."""

from __future__ import annotations

import ast
import asyncio
import json
from pathlib import Path

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

import proxy.forward
from proxy.exchange import Dispatcher
from proxy.forward import Forwarder, _filter_headers, _unsafe_target, error_response


def _headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


# --- headers ---------------------------------------------------------------------------------

HOP_BY_HOP = [
    ("Connection", "keep-alive"),
    ("Keep-Alive", "timeout=5"),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Transfer-Encoding", "chunked"),
    ("Upgrade", "websocket"),
    ("Proxy-Authorization", "Basic eDp5"),
    ("Proxy-Authenticate", "Basic"),
    ("Proxy-Connection", "keep-alive"),
    ("Host", "client.example"),
]
END_TO_END = [
    ("Authorization", "Bearer sk-abc"),
    ("api-key", "azure-key"),
    ("OpenAI-Organization", "org-1"),
    ("OpenAI-Project", "proj_1"),
    ("OpenAI-Beta", "assistants=v2"),
    ("Content-Type", "application/json"),
    ("Content-Length", "12"),
    ("Accept-Encoding", "gzip, br"),
    ("X-Stainless-Lang", "python"),
    ("X-Usage", "no dash, so not ours"),
    ("X-Usages-Team", "not the prefix either"),
]


@pytest.mark.parametrize("request_side", [True, False], ids=["request", "response"])
@pytest.mark.parametrize("header", HOP_BY_HOP, ids=[h[0] for h in HOP_BY_HOP])
def test_hop_by_hop_headers_are_dropped(request_side: bool, header: tuple[str, str]) -> None:
    out = _filter_headers(_headers(header, ("X-Keep", "1")), request=request_side)
    assert list(out.items()) == [("X-Keep", "1")]


@pytest.mark.parametrize("header", END_TO_END, ids=[h[0] for h in END_TO_END])
def test_end_to_end_headers_go_through(header: tuple[str, str]) -> None:
    assert list(_filter_headers(_headers(header), request=True).items()) == [header]


def test_headers_named_by_connection_are_dropped() -> None:
    given = _headers(
        ("Connection", "close, X-Hop-One"),
        ("connection", " x-hop-two ,,"),
        ("X-Hop-One", "1"),
        ("X-HOP-TWO", "2"),
        ("X-Kept", "3"),
    )
    for side in (True, False):
        assert list(_filter_headers(given, request=side).items()) == [("X-Kept", "3")]


@pytest.mark.parametrize("name", ["X-Usage-Team", "x-usage-team", "X-USAGE-Anything"])
def test_x_usage_headers_stay_with_the_proxy(name: str) -> None:
    assert list(_filter_headers(_headers((name, "t")), request=True).items()) == []
    # Responses are the upstream's: its headers are not ours to strip.
    assert list(_filter_headers(_headers((name, "t")), request=False).items()) == [(name, "t")]


def test_order_case_and_repeats_are_kept() -> None:
    given = [("x-b", "1"), ("Set-Cookie", "a=1"), ("X-A", "2"), ("set-cookie", "b=2")]
    assert list(_filter_headers(_headers(*given), request=False).items()) == given


# --- request targets -------------------------------------------------------------------------

SAFE = [
    "/",
    "/v1/chat/completions",
    "/v1/files/file-abc/content?size=10",
    "/openai/deployments/gpt/chat/completions?api-version=2024-06-01",
    "/v1/files/a..b/content",
    "/v1/files/.hidden",
    "/v1/files/...",
    "/v1/echo?path=../../etc&x=%2e%2e",  # the query is not a path
    "/v1/%E2%9C%93",
    "/v1/a%2Fb",
]
UNSAFE = [
    "http://evil.example/v1/x",
    "https://evil.example/",
    "evil.example:443",
    "*",
    "",
    "//evil.example/v1",
    "/v1/../x",
    "/..",
    "/v1/.",
    "/v1/./x",
    "/v1/%2e%2e/x",
    "/v1/%2E%2e/x",
    "/v1/.%2E/x",
    "/v1/%252e%252e/x",
    "/v1/%25252e%25252e/x",
    "/v1/..%2fx",
    "/v1/..%2Fx",
    "/v1\\..\\x",
    "/v1/..%5cx",
    "/v1/..;jsessionid=1/x",
    "/v1/%0d%0aHost:evil",
    "/v1/x%00",
]


@pytest.mark.parametrize("target", SAFE)
def test_safe_targets(target: str) -> None:
    assert _unsafe_target(target) is None


@pytest.mark.parametrize("target", UNSAFE)
def test_unsafe_targets(target: str) -> None:
    assert _unsafe_target(target)


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


def test_forward_imports_nothing_from_accounting_or_db() -> None:
    tree = ast.parse(Path(proxy.forward.__file__).read_text())
    modules = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)] + [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ]
    assert not [m for m in modules if m.startswith(("proxy.accounting", "proxy.db"))]


async def test_header_deadlines_cancel_only_what_waited_too_long() -> None:
    from proxy.forward import _HeaderDeadlines

    deadlines = _HeaderDeadlines(0.2)
    deadlines.start()
    never = asyncio.get_running_loop().create_future()

    async def wait(forever: bool) -> str:
        task = asyncio.current_task()
        assert task is not None
        deadlines.add(task)
        try:
            if forever:
                await never
            else:
                await asyncio.sleep(0.01)
            return "answered"
        except asyncio.CancelledError:
            if not deadlines.expired(task):
                raise
            task.uncancel()
            return "timed out"
        finally:
            deadlines.discard(task)

    try:
        slow, quick = asyncio.create_task(wait(True)), asyncio.create_task(wait(False))
        assert await asyncio.wait_for(quick, 5) == "answered"
        assert await asyncio.wait_for(slow, 5) == "timed out"
        # A task cancelled for another reason (its client left) is not a timeout.
        other = asyncio.create_task(wait(True))
        await asyncio.sleep(0)
        other.cancel()
        with pytest.raises(asyncio.CancelledError):
            await other
        assert not deadlines._waiting and not deadlines._expired
    finally:
        await deadlines.stop()
