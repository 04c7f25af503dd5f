"""usage rows name the estimator and constants that made their estimate, and keep its bases, so
that a change of constants shows in reports and calibration can refit from recorded runs.
Written by hand after the model change, checked by `alembic check`.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 10:55:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("estimator", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("estimate_basis", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_column("estimate_basis")
        batch_op.drop_column("estimator")
