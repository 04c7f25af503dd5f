"""A TOML config file for the settings tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def config(tmp_path: Path):
    def write(text: str) -> str:
        path = tmp_path / "usage-proxy.toml"
        path.write_text(text)
        return str(path)

    return write
