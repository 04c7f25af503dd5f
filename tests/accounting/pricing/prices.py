"""Price tables for the pricing tests: dates, override files, entries."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
D = Decimal


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def write_override(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pricing.toml"
    path.write_text(text, encoding="utf-8")
    return path


def model_entry(model: str = "gpt-4o", since: str = "2025-01-01", **toml_values: str) -> str:
    values = {"input": '"1.00"', "output": '"2.00"', **toml_values}
    lines = [f'model = "{model}"', f"effective_from = {since}"]
    lines += [f"{key} = {value}" for key, value in values.items()]
    return "[[models]]\n" + "\n".join(lines) + "\n"
