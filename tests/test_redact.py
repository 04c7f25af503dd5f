"""Masking credentials in text (proxy.redact), as logs and stored errors use it."""

from __future__ import annotations

import pytest

from proxy.redact import redact
from tests.fake_keys import fake_key

KEY = fake_key("logs", "9876")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"key {KEY} seen", "key sk-*** seen"),
        (f"Authorization: Bearer {KEY}", "Authorization: Bearer ***"),
        ("authorization: bearer admin-token-1", "authorization: bearer ***"),
        ("api-key: 0123456789abcdef0123456789abcdef", "api-key: ***"),
        ('{"api_key": "azure-secret"}', '{"api_key": "***"}'),
        ("api-key=abc&x=1", "api-key=***&x=1"),
        ("task-force and disk-usage are words", "task-force and disk-usage are words"),
        ("sk-1 is too short to be a key", "sk-1 is too short to be a key"),
        ("GET /v1/models 200 1.2ms", "GET /v1/models 200 1.2ms"),
        # Issue 20: no literal space or word boundary to rely on (raw, and as a repr shows it).
        (f"Bearer\t{KEY}", "Bearer\t***"),
        (repr(f"Bearer\t{KEY}"), "'Bearer\\t***'"),
        ("Bearer\x0bopaque-token-123", "Bearer\x0b***"),
        (repr(f"Bearer\x0b{KEY}"), "'Bearer\\x0b***'"),
        ("GET /v1/x?key=opaque-value-123\x7f HTTP/1.1", "GET /v1/x?key=*** HTTP/1.1"),
        (repr("?key=opaque-value-123\x7f"), "'?key=***'"),
        (f"url=/v1/x?foo=1&api_key={KEY}", "url=/v1/x?foo=1&api_key=***"),
        # Credential headers by name, whatever their value looks like.
        ("{'Authorization': 'Basic dXNlcjpwYXNz'}", "{'Authorization': 'Basic ***'}"),
        ("{'api-key': 'opaque-azure-key'}", "{'api-key': '***'}"),
        ("Authorization:\tToken abc", "Authorization:\t***"),
        ("X-Api-Key: abcdef", "X-Api-Key: ***"),
        ("prompt_tokens: 10, total_tokens: 12", "prompt_tokens: 10, total_tokens: 12"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected
