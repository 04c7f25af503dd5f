"""usage_records.deployment (the Azure OpenAI deployment of a request, issue 16),
billed_costs.deployment (an Azure cost export's, which reconcile meets it at), and
usage_records.web_search_preview_calls (web_search_preview calls on non-reasoning models, counted
apart from web_search so that reprice prices each at its own rate, issue 15). Written by hand,
checked by `alembic check`.

The views are dropped first and created again (see 0008): `usage` gains both columns,
the others are 0004's.

Revision ID: 0012
Revises: 0009
Create Date: 2026-12-02 14:30:00+00:00
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_VIEWS = ("usage_monthly_team", "usage_daily", "usage")
_NEW = "function_calls, web_search_preview_calls, deployment"


def _views_0004() -> ModuleType:
    path = Path(__file__).with_name("2026_12_02_0004_views.py")
    spec = importlib.util.spec_from_file_location("_views_0004", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _drop_views() -> None:
    for view in _VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")


def upgrade() -> None:
    _drop_views()
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("web_search_preview_calls", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("deployment", sa.String(length=255), nullable=True))
    with op.batch_alter_table("billed_costs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("deployment", sa.String(length=255), nullable=False, server_default="")
        )
        batch_op.drop_constraint("uq_billed_costs_source", type_="unique")
        batch_op.create_unique_constraint(
            "uq_billed_costs_source",
            ["source", "day", "project", "api_key_id", "deployment", "line_item"],
        )
    with op.batch_alter_table("billed_costs", schema=None) as batch_op:
        batch_op.alter_column("deployment", server_default=None)
    views = _views_0004()
    sqlite = op.get_bind().dialect.name == "sqlite"
    usage = views._SQLITE_USAGE if sqlite else views._POSTGRES_USAGE
    assert usage.count("function_calls") == 1
    op.execute(usage.replace("function_calls", _NEW))
    op.execute(views._SQLITE_DAILY if sqlite else views._POSTGRES_DAILY)
    op.execute(views._SQLITE_MONTHLY if sqlite else views._POSTGRES_MONTHLY)


def downgrade() -> None:
    # Rows that differ only by deployment would collide under the old key: fold them first.
    op.execute("DELETE FROM billed_costs WHERE source = 'azure' AND deployment <> ''")
    with op.batch_alter_table("billed_costs", schema=None) as batch_op:
        batch_op.drop_constraint("uq_billed_costs_source", type_="unique")
        batch_op.create_unique_constraint(
            "uq_billed_costs_source", ["source", "day", "project", "api_key_id", "line_item"]
        )
        batch_op.drop_column("deployment")
    _drop_views()
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_column("deployment")
        batch_op.drop_column("web_search_preview_calls")
    _views_0004().upgrade()
