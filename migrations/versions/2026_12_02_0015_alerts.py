"""alerts: one outbox for every source (a `source` and its own unique `dedup_key`) in place of
budget_alerts, whose budget_id 0 held the billing residuals' alerts. Rows are carried over with
their state (attempts, next attempt, lease, sent_at) and keep their identity: a budget's alert
becomes source "budget", key "<budget id>/<period start>/<kind>/<threshold>"
(proxy.db.budgets.alert_key); budget_id 0 becomes source "reconcile", key "residual/<day>"
(proxy.reconcile.schedule). Written by hand: autogenerate cannot carry rows.

Downgrade reverses it; alerts of another source have no place in budget_alerts and are lost.

Revision ID: 0015
Revises: 0010
Create Date: 2026-12-02 17:30:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_RESIDUAL = 0  # the budget_id that stood for the billing residuals


def _when() -> sa.types.TypeEngine:
    return sa.DateTime(timezone=True)


# The state an alert keeps across the move, typed so that rows read and written back are the
# same values on both backends.
_STATE = {
    "payload": sa.Text(),
    "created_at": _when(),
    "attempts": sa.Integer(),
    "next_attempt_at": _when(),
    "last_error": sa.String(length=255),
    "claimed_by": sa.String(length=128),
    "claimed_until": _when(),
    "sent_at": _when(),
}
_NULLABLE = {"last_error", "claimed_by", "claimed_until", "sent_at"}
_BUDGET_IDENTITY = {
    "budget_id": sa.Integer(),
    "period_start": sa.String(length=10),
    "kind": sa.String(length=16),
    "threshold": sa.Integer(),
}
_ALERT_IDENTITY = {"source": sa.String(length=32), "dedup_key": sa.String(length=255)}


def _id() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _state_columns() -> list[sa.Column]:
    return [sa.Column(name, kind, nullable=name in _NULLABLE) for name, kind in _STATE.items()]


def _rows(name: str, identity: dict[str, sa.types.TypeEngine]) -> list[dict]:
    columns = {"id": sa.Integer(), **identity, **_STATE}
    table = sa.table(name, *(sa.column(c, kind) for c, kind in columns.items()))
    # In id order, so the new ids (not carried: PostgreSQL's sequence would not know them) keep
    # the order alerts are claimed in.
    result = op.get_bind().execute(sa.select(table).order_by(table.c.id))
    return [dict(row._mapping) for row in result]


def _create_alerts() -> sa.Table:
    table = op.create_table(
        "alerts",
        sa.Column("id", _id(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("dedup_key", sa.String(length=255), nullable=False),
        *_state_columns(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
        sa.UniqueConstraint("source", "dedup_key", name="uq_alerts_source"),
    )
    op.create_index("ix_alerts_sent_at", "alerts", ["sent_at"], unique=False)
    return table


def _create_budget_alerts() -> sa.Table:
    table = op.create_table(
        "budget_alerts",
        sa.Column("id", _id(), nullable=False),
        sa.Column("budget_id", sa.Integer(), nullable=False),
        sa.Column("period_start", sa.String(length=10), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        *_state_columns(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budget_alerts")),
        sa.UniqueConstraint(
            "budget_id",
            "period_start",
            "kind",
            "threshold",
            name="uq_budget_alerts_budget_id",
        ),
    )
    op.create_index("ix_budget_alerts_sent_at", "budget_alerts", ["sent_at"], unique=False)
    return table


def upgrade() -> None:
    alerts = _create_alerts()
    rows = []
    for row in _rows("budget_alerts", _BUDGET_IDENTITY):
        state = {name: row[name] for name in _STATE}
        if row["budget_id"] == _RESIDUAL:
            identity = {"source": "reconcile", "dedup_key": f"residual/{row['period_start']}"}
        else:
            key = f"{row['budget_id']}/{row['period_start']}/{row['kind']}/{row['threshold']}"
            identity = {"source": "budget", "dedup_key": key}
        rows.append({**identity, **state})
    if rows:
        op.bulk_insert(alerts, rows)
    op.drop_index("ix_budget_alerts_sent_at", table_name="budget_alerts")
    op.drop_table("budget_alerts")


def downgrade() -> None:
    budget_alerts = _create_budget_alerts()
    rows = []
    for row in _rows("alerts", _ALERT_IDENTITY):
        state = {name: row[name] for name in _STATE}
        if row["source"] == "reconcile" and row["dedup_key"].startswith("residual/"):
            day = row["dedup_key"].removeprefix("residual/")
            identity = (_RESIDUAL, day, "residual", 0)
        elif row["source"] == "budget":
            budget_id, period_start, kind, threshold = row["dedup_key"].split("/")
            identity = (int(budget_id), period_start, kind, int(threshold))
        else:
            continue
        rows.append({**dict(zip(_BUDGET_IDENTITY, identity, strict=True)), **state})
    if rows:
        op.bulk_insert(budget_alerts, rows)
    op.drop_index("ix_alerts_sent_at", table_name="alerts")
    op.drop_table("alerts")
