"""The pipe to the collector process (proxy.accounting.process.wire): what goes across comes
back the same, and a bad line is refused with a message that repeats nothing of it."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal

import pytest

from proxy.accounting.process import wire
from proxy.accounting.usage import UsageRecorded, UsageTotal
from proxy.settings import Settings
from tests.fake_keys import fake_key

KEY = fake_key("wire", "4321")


def test_settings_keys_wake_ups_usage_and_failures_round_trip() -> None:
    settings = Settings(upstream="http://up.example:81/v1", key_secret="s", collector_workers=7)
    assert wire.decode(wire.settings_line(settings)) == ("settings", settings)
    headers = (("Authorization", f"Bearer {KEY}"), ("OpenAI-Project", "proj_1"))
    assert wire.decode(wire.key_line("fp1", headers)) == ("key", ("fp1", headers))
    assert wire.decode(wire.WAKE) == ("wake", None)
    assert wire.decode(wire.READY) == ("ready", None)
    assert wire.decode(wire.failed_line("fetch_429", 3)) == ("failed", ("fetch_429", 3))
    cost = Decimal("0.0000123456789")
    event = UsageRecorded(
        (
            UsageTotal("assistants.run", "estimated", "red", "gpt-4o", 64, 10, 20, cost),
            UsageTotal("assistants.run", "reported", "unassigned", None, 1, 0, 0, Decimal(0), 1),
        )
    )
    kind, got = wire.decode(wire.recorded_line(event))
    assert (kind, got) == ("recorded", event)
    assert isinstance(got.totals[0].cost_usd, Decimal)  # exact, not a float


@pytest.mark.parametrize(
    "line, why",
    [
        (b"not json " + KEY.encode(), "not JSON"),
        (b'["key"]', "not an object"),
        (b'{"wake": 1, "ready": 1}', "not an object of one message"),
        (b'{"shell": "' + KEY.encode() + b'"}', "unknown message 'shell'"),
        (b'{"key": ["fp", "' + KEY.encode() + b'"]}', "key: not"),
        (b'{"key": ["fp", [["Authorization"]]]}', "key: not"),
        (b'{"metric": ["__class__", []]}', "unknown message 'metric'"),
        (b'{"failed": ["a"]}', "failed: not [reason, count]"),
        (b'{"failed": ["a", -1]}', "failed: not [reason, count]"),
        (b'{"failed": ["a", true]}', "failed: not [reason, count]"),
        (b'{"recorded": {"a": 1}}', "recorded: not a list"),
        (b'{"recorded": [["k", "s", "t", "m", 1, 2, 3, "1"]]}', "recorded: not [kind"),
        (b'{"recorded": [["k", "s", "t", 5, 1, 2, 3, "1", 0]]}', "recorded: not [kind"),
        (b'{"recorded": [["k", "s", "t", "m", 1, -2, 3, "1", 0]]}', "recorded: not [kind"),
        (b'{"recorded": [["k", "s", "t", "m", 1, 2, 3, "1", -1]]}', "recorded: not [kind"),
        (
            b'{"recorded": [["k", "s", "t", "m", 1, 2, 3, "' + KEY.encode() + b'", 0]]}',
            "cost is not",
        ),
        (b'{"settings": {"api_key": "' + KEY.encode() + b'"}}', "unknown names ['api_key']"),
    ],
)
def test_bad_lines_are_refused_without_repeating_them(line: bytes, why: str) -> None:
    with pytest.raises(wire.WireError) as raised:
        wire.decode(line)
    assert why in str(raised.value)
    assert KEY not in str(raised.value) and "sk-" not in str(raised.value)


async def test_messages_are_read_until_the_other_end_closes_and_bad_ones_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(wire.WAKE + b'{"key": "' + KEY.encode() + b'"}\n' + wire.READY)
    reader.feed_eof()
    with caplog.at_level(logging.ERROR):
        got = [m async for m in wire.messages(reader, "serving process")]
    assert got == [("wake", None), ("ready", None)]
    assert "a bad message from the serving process: key: not" in caplog.text
    assert KEY not in caplog.text
