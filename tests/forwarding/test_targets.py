"""targets.py: which headers cross, and which request targets are refused."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.forwarding.targets import filter_headers, unsafe_target


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
    out = filter_headers(_headers(header, ("X-Keep", "1")), request=request_side)
    assert list(out.items()) == [("X-Keep", "1")]


@pytest.mark.parametrize("header", END_TO_END, ids=[h[0] for h in END_TO_END])
def test_end_to_end_headers_go_through(header: tuple[str, str]) -> None:
    assert list(filter_headers(_headers(header), request=True).items()) == [header]


def test_headers_named_by_connection_are_dropped() -> None:
    given = _headers(
        ("Connection", "close, X-Hop-One"),
        ("connection", " x-hop-two ,,"),
        ("X-Hop-One", "1"),
        ("X-HOP-TWO", "2"),
        ("X-Kept", "3"),
    )
    for side in (True, False):
        assert list(filter_headers(given, request=side).items()) == [("X-Kept", "3")]


@pytest.mark.parametrize("name", ["X-Usage-Team", "x-usage-team", "X-USAGE-Anything"])
def test_x_usage_headers_stay_with_the_proxy(name: str) -> None:
    assert list(filter_headers(_headers((name, "t")), request=True).items()) == []
    # Responses are the upstream's: its headers are not ours to strip.
    assert list(filter_headers(_headers((name, "t")), request=False).items()) == [(name, "t")]


def test_order_case_and_repeats_are_kept() -> None:
    given = [("x-b", "1"), ("Set-Cookie", "a=1"), ("X-A", "2"), ("set-cookie", "b=2")]
    assert list(filter_headers(_headers(*given), request=False).items()) == given


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
    assert unsafe_target(target) is None


@pytest.mark.parametrize("target", UNSAFE)
def testunsafe_targets(target: str) -> None:
    assert unsafe_target(target)
