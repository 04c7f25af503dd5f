"""unseen creates: run intents of create-and-runs (POST .../threads/runs, no thread in the path)
have no thread (thread_id NULL) and carry the request's assistant id; `unseen_at` marks one
whose worker died and which no sighting matched (proxy.db.unseen_creates): a run that may be
unrecorded.
Written by hand after the model change, checked by `alembic check`.

Revision ID: 0016
Revises: 0014
Create Date: 2026-12-02 23:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("run_intents", schema=None) as batch_op:
        batch_op.alter_column("thread_id", existing_type=sa.String(length=255), nullable=True)
        batch_op.add_column(sa.Column("assistant_id", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("unseen_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # The older schema has no place for a create-and-run's intent (no thread): they go.
    op.execute(sa.text("DELETE FROM run_intents WHERE thread_id IS NULL"))
    with op.batch_alter_table("run_intents", schema=None) as batch_op:
        batch_op.drop_column("unseen_at")
        batch_op.drop_column("assistant_id")
        batch_op.alter_column("thread_id", existing_type=sa.String(length=255), nullable=False)
