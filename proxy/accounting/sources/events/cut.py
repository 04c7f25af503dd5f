"""Answers larger than `max_observed_body`: the kept copy is cut, cannot be parsed, and lacks
the `usage` at its end. An embeddings list (many inputs, many dimensions) easily grows past
the cap; its row is then estimated from the request's inputs instead of being lost. Pure.

The prompt is the tokens of the `input` (a string, a list of strings, or token arrays, which
count their length); the row's usage_source is "estimated", or "estimated_partial" when the
request was cut too (then the inputs cannot be read, and count 0)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from proxy.accounting.attribution import Attribution
from proxy.accounting.estimate.chat import TokenCounter
from proxy.accounting.pricing import PriceTable
from proxy.accounting.sources.events.rows import embedding_row
from proxy.accounting.usage import UsageRow
from proxy.forwarding.decode import DecodeError, Decompressor

__all__ = ["cut_embedding_row", "decoded_head", "embedding_input_tokens", "is_cut_embeddings"]

_HEAD_BYTES = 4096

# The head of an embeddings list, whatever the whitespace and the order of its first keys.
_HEAD = re.compile(rb'^\s*\{[^\[]*"data"\s*:\s*\[\s*\{\s*"object"\s*:\s*"embedding"')
_LIST = re.compile(rb'"object"\s*:\s*"list"')


def decoded_head(raw: bytes, content_encoding: str | None) -> bytes:
    """The first bytes of a body with its Content-Encoding undone, from a copy that may be cut
    anywhere (a compressed answer larger than the cap, or one that decodes larger than it):
    a gzip, deflate or brotli stream decodes its prefix as far as it goes. b"" when it
    cannot be decoded at all."""
    if not content_encoding:
        return raw[:_HEAD_BYTES]
    try:
        return Decompressor(content_encoding, limit=_HEAD_BYTES).feed(raw)[:_HEAD_BYTES]
    except DecodeError:
        return b""


def is_cut_embeddings(head: bytes) -> bool:
    """Whether a cut response body begins as an embeddings list."""
    start = head[:_HEAD_BYTES]
    return bool(_LIST.search(start)) and bool(_HEAD.search(start) or b'"embedding"' in start)


def embedding_input_tokens(request: Mapping[str, Any] | None, count: TokenCounter) -> int:
    """Tokens of an embeddings request's `input`."""
    value = request.get("input") if request else None
    items = value if isinstance(value, list) else [value]
    if items and all(isinstance(i, int) for i in items):
        return len(items)  # one token array
    total = 0
    for item in items:
        if isinstance(item, str):
            total += max(count(item), 0)
        elif isinstance(item, list):
            total += len(item)
    return total


def cut_embedding_row(
    request: Mapping[str, Any] | None,
    count: TokenCounter,
    who: Attribution,
    prices: PriceTable,
    now: dt.datetime,
    *,
    object_id: str,
) -> UsageRow:
    """The estimated row of an embeddings answer too large to read; `request` is None when
    the request was cut too."""
    model = request.get("model") if request else None
    body = {
        "model": model if isinstance(model, str) else None,
        "usage": {"prompt_tokens": embedding_input_tokens(request, count)},
    }
    row = embedding_row(body, who, prices, now, object_id=object_id)
    return dataclasses.replace(
        row,
        usage_source="estimated" if request is not None else "estimated_partial",
        estimated_prompt_tokens=row.prompt_tokens,
    )
