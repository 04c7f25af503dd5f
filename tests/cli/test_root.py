from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.cli.runner import run
from tests.fake_keys import fake_key

BIN = Path(sys.executable).parent / "usage-proxy"
KEY = fake_key("cli", "9876")


def test_version_and_help_exit_0(capsys):
    assert run(capsys, "--version")[0] == 0
    assert run(capsys, "--help")[0] == 0


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["serve", "--listen", "0.0.0.0"], "--listen 0.0.0.0"),
        (["serve", "--listen=0.0.0.0"], "--listen=0.0.0.0"),
        (["report", "--formt", "csv"], "--formt csv"),
        (["report", "extra"], "extra"),
        (["serve", "--key-secret", "s3cret"], "--key-secret ***"),
        (["serve", "--admin-token=s3cret"], "--admin-token=***"),
        (["serve", "--oops", KEY], "--oops ***"),
        (["serve", "--oops", "0123456789abcdef0123456789abcdef"], "--oops ***"),
        (["keys", "add", "--team", "red", KEY], "***"),
        (["serve", "--db", "postgresql://u:s3cret@db/x"], "--db postgresql://u:***@db/x"),
    ],
)
def test_an_unknown_argument_is_shown_unless_it_may_be_a_secret(capsys, argv, shown):
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert (
        err == f"usage-proxy: error: unrecognized arguments: {shown} (see `usage-proxy --help`)\n"
    )
    assert "s3cret" not in err and KEY[3:] not in err


def test_serve_help_says_what_no_migrate_does(capsys):
    code, out, _ = run(capsys, "serve", "--help")
    assert code == 0
    flat = " ".join(out.split())
    assert "--no-migrate do not upgrade the database schema on start" in flat
