"""collection jobs of objects still in progress: `in_progress` marks a job opened when its run
was first seen (created, queued, in progress), which the collector follows until it ends;
every job written before this one was opened for a finished run.
Written by hand after the model change, checked by `alembic check`.

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-02 13:40:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("collection_jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("in_progress", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("collection_jobs", schema=None) as batch_op:
        batch_op.drop_column("in_progress")
