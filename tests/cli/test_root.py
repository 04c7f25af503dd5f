from __future__ import annotations

import sys
from pathlib import Path

from tests.cli.runner import run
from tests.fake_keys import fake_key

BIN = Path(sys.executable).parent / "usage-proxy"
KEY = fake_key("cli", "9876")


def test_version_and_help_exit_0(capsys):
    assert run(capsys, "--version")[0] == 0
    assert run(capsys, "--help")[0] == 0
