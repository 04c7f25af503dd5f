"""Oversized requests are never silently undercounted (issue 15, point 1), end to end on both
backends: streamed chat completions through the openai SDK whose bodies exceed
`max_observed_request` (10 MiB of text; a 3 MiB image) are recorded with the tokens of the part
the proxy kept, as usage_source "estimated_partial", with one warning naming the request id and
the metric counting them."""

from __future__ import annotations

import base64
import logging
import os
import re

import pytest

from proxy.accounting.estimate.tokenizer import counter_for_model
from proxy.settings import Settings
from tests.e2e.conftest import RunningProxy, client_for
from tests.e2e.test_events import metric, rows, settle

MIB = 1024 * 1024


@pytest.fixture
async def proxy(db_url: str, upstream, start_proxy) -> RunningProxy:
    return await start_proxy(Settings(upstream=upstream.url, database_url=db_url, key_secret="s"))


async def stream_chat(proxy: RunningProxy, content) -> None:
    client = client_for(proxy, timeout=120)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": content}], stream=True
    )
    async for _ in stream:
        pass
    await settle(proxy)


def partial_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "estimated_partial" in r.getMessage()]


async def test_ten_mib_of_text_is_counted_from_its_kept_part(
    proxy: RunningProxy, sm, caplog: pytest.LogCaptureFixture
):
    text = "hello world " * (10 * MIB // 12)
    with caplog.at_level(logging.WARNING, logger="proxy.accounting.events"):
        await stream_chat(proxy, text)
    [row] = await rows(sm)
    assert row["usage_source"] == "estimated_partial"
    # At least the words of the first 4 MiB (the default cap), at most all of them.
    kept = counter_for_model("gpt-4o-mini")("hello world " * (4 * MIB // 12 - 10))
    assert kept <= row["prompt_tokens"] < counter_for_model("gpt-4o-mini")(text)
    [warning] = partial_warnings(caplog)
    assert re.search(r"request \S+ \(chat completion chatcmpl", warning), warning
    assert metric(proxy, "usage_proxy_estimated_partial_total", kind="chat.completion") == 1


async def test_a_three_mib_image_is_flagged_and_counted_as_an_image(
    proxy: RunningProxy, sm, caplog: pytest.LogCaptureFixture
):
    image = base64.b64encode(b"\x89PNG\r\n\x1a\n" + os.urandom(3 * MIB)).decode()
    content = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
    ]
    with caplog.at_level(logging.WARNING, logger="proxy.accounting.events"):
        await stream_chat(proxy, content)
    [row] = await rows(sm)
    assert row["usage_source"] == "estimated_partial"
    assert row["prompt_tokens"] >= 765 + 6  # the image at the high rate, and the question
    assert len(partial_warnings(caplog)) == 1


async def test_a_request_within_the_cap_is_estimated_whole(proxy: RunningProxy, sm, caplog):
    with caplog.at_level(logging.WARNING, logger="proxy.accounting.events"):
        await stream_chat(proxy, "hello world " * 1000)
    [row] = await rows(sm)
    assert row["usage_source"] == "estimated"
    assert partial_warnings(caplog) == []
    assert metric(proxy, "usage_proxy_estimated_partial_total", kind="chat.completion") == 0


async def test_an_embeddings_answer_too_large_to_read_is_estimated_from_the_request(
    db_url: str, upstream, start_proxy, sm, caplog: pytest.LogCaptureFixture
):
    settings = Settings(
        upstream=upstream.url, database_url=db_url, key_secret="s", max_observed_body=1024
    )
    proxy = await start_proxy(settings)
    inputs = [f"hello world {i}" for i in range(100)]  # an answer of ~6 KB
    with caplog.at_level(logging.WARNING, logger="proxy.accounting.events"):
        await client_for(proxy).embeddings.create(model="text-embedding-3-small", input=inputs)
        await settle(proxy)
    [row] = await rows(sm)
    count = counter_for_model("text-embedding-3-small")
    assert (row["kind"], row["usage_source"]) == ("embedding", "estimated")
    assert row["prompt_tokens"] == sum(count(text) for text in inputs)
    assert row["model"] == "text-embedding-3-small" and row["cost_usd"] > 0
    assert any("larger than max_observed_body" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("coding", ["gzip", "br"])
@pytest.mark.parametrize("n", [100, 4000])
async def test_a_compressed_embeddings_answer_too_large_to_read_is_estimated(
    db_url: str, upstream, start_proxy, sm, coding: str, n: int
):
    """Compressed on the wire: 100 inputs decode past the cap (the copy is whole but too
    large once decoded); 4,000 are past the cap compressed already (the copy is cut)."""
    settings = Settings(
        upstream=upstream.url, database_url=db_url, key_secret="s", max_observed_body=1024
    )
    proxy = await start_proxy(settings)
    upstream.compress_embeddings = coding
    inputs = [f"hello world {i}" for i in range(n)]
    await client_for(proxy).embeddings.create(model="text-embedding-3-small", input=inputs)
    await settle(proxy)
    assert (upstream.last_embeddings_bytes > 1024) is (n == 4000)
    [row] = await rows(sm)
    count = counter_for_model("text-embedding-3-small")
    assert (row["kind"], row["usage_source"]) == ("embedding", "estimated")
    assert row["prompt_tokens"] == sum(count(text) for text in inputs)
