"""usage_records.cost_usd may be NULL: a row whose model or tool had no price records no cost
rather than a silent 0 (issue 15). audit_log: one row per change made to recorded usage after
the fact (reassign, reprice). Written by hand, checked by `alembic check`.

SQLite alters a column by copying the table (batch mode), which a view that reads the table
does not survive: the three views of 0004 are dropped first and created again, unchanged, from
0004's own statements. PostgreSQL drops NOT NULL in place; its views stay.

Revision ID: 0005
Revises: 0005j
Create Date: 2026-12-02 10:40:00+00:00
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0005j"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MONEY = sa.Numeric(precision=20, scale=10).with_variant(sa.BigInteger(), "sqlite")
_VIEWS = ("usage_monthly_team", "usage_daily", "usage")


def _views_0004() -> ModuleType:
    path = Path(__file__).with_name("2026_12_02_0004_views.py")
    spec = importlib.util.spec_from_file_location("_views_0004", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cost_nullable(nullable: bool) -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        for view in _VIEWS:
            op.execute(f"DROP VIEW IF EXISTS {view}")
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.alter_column("cost_usd", existing_type=_MONEY, nullable=nullable)
    if sqlite:
        _views_0004().upgrade()


def upgrade() -> None:
    _cost_nullable(True)
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", _MONEY, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(op.f("ix_audit_log_at"), "audit_log", ["at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_log_at"), table_name="audit_log")
    op.drop_table("audit_log")
    # Unpriced rows had no cost; before this revision they counted as 0.
    op.execute("UPDATE usage_records SET cost_usd = 0 WHERE cost_usd IS NULL")
    _cost_nullable(False)
