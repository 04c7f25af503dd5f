"""A prompt estimate from the part of a request body the proxy kept: a request larger than
`max_observed_request` is copied only up to it, and the cut JSON cannot be parsed. Pure.

What is counted is a lower bound: every complete string value in the kept part (object keys
excluded), the text of a value the cut ends in, and an image for each `data:image/...` URL
begun in it (at the `image_high` rate: its size is unknown). Whatever lies beyond the cut is
not seen, so a row estimated this way says so (usage_source "estimated_partial")."""

from __future__ import annotations

import json
import re

from proxy.accounting.estimate.chat import ChatEstimateConstants, TokenCounter

__all__ = ["estimate_partial_prompt"]

_DEFAULT = ChatEstimateConstants()
# A JSON string, and whether a colon follows (then it is a key).
_STRING = re.compile(rb'"((?:[^"\\]|\\.)*)"(\s*:)?', re.S)
_IMAGE = b"data:image/"


def _text(raw: bytes) -> str:
    try:
        value = json.loads(b'"' + raw + b'"')
    except ValueError:
        return raw.decode("utf-8", "ignore")
    return value if isinstance(value, str) else ""


def estimate_partial_prompt(
    prefix: bytes, count: TokenCounter, c: ChatEstimateConstants = _DEFAULT
) -> int:
    """Prompt tokens at least in `prefix`, the first bytes of a chat completions request."""
    total, end = 0, 0
    for match in _STRING.finditer(prefix):
        end = match.end()
        if match.group(2):
            continue
        raw = match.group(1)
        if raw.startswith(_IMAGE):
            total += c.image_high
        elif raw and not raw.startswith(b"data:"):
            total += max(count(_text(raw)), 0)
    tail = prefix[end:]
    start = tail.find(b'"')
    if start >= 0:
        rest = tail[start + 1 :]
        if rest.startswith(_IMAGE):
            total += c.image_high
        elif not rest.startswith(b"data:"):
            total += max(count(rest.decode("utf-8", "ignore")), 0)
    return total
