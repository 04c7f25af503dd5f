"""usage_records.usage_source widens to 32 characters: "estimated_partial" (a prompt estimated
from part of an oversized request, issue 15) has 17. Written by hand, checked by `alembic
check`.

A view that reads a column stops PostgreSQL from changing its type, and SQLite's batch mode
copies the table: on both backends the views of 0004 are dropped first and created again,
unchanged, from 0004's own statements.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 11:10:00+00:00
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_VIEWS = ("usage_monthly_team", "usage_daily", "usage")


def _recreate_views_0004() -> None:
    path = Path(__file__).with_name("2026_12_02_0004_views.py")
    spec = importlib.util.spec_from_file_location("_views_0004", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.upgrade()


def _width(old: int, new: int) -> None:
    for view in _VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.alter_column(
            "usage_source",
            existing_type=sa.String(length=old),
            type_=sa.String(length=new),
            existing_nullable=False,
        )
    _recreate_views_0004()


def upgrade() -> None:
    _width(16, 32)


def downgrade() -> None:
    op.execute(
        "UPDATE usage_records SET usage_source = 'estimated' "
        "WHERE usage_source = 'estimated_partial'"
    )
    _width(32, 16)
