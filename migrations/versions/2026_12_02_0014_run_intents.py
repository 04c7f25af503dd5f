"""run intents: a run create written down before it is forwarded, so that a replica killed
before it stored the run's job leaves something to recover the run from.
Written by hand after the model change, checked by `alembic check`.

Revision ID: 0014
Revises: 0015
Create Date: 2026-12-02 18:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "run_intents",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("thread_id", sa.String(length=255), nullable=False),
        sa.Column("api_prefix", sa.String(length=512), nullable=False),
        sa.Column("api_query", sa.String(length=1024), nullable=False),
        sa.Column("key_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("key_hint", sa.String(length=32), nullable=True),
        sa.Column("team", sa.String(length=128), nullable=True),
        sa.Column("tag", sa.String(length=128), nullable=True),
        sa.Column("project", sa.String(length=255), nullable=True),
        sa.Column("organization", sa.String(length=255), nullable=True),
        sa.Column("worker", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_intents")),
    )
    with op.batch_alter_table("run_intents", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_run_intents_key_fingerprint"), ["key_fingerprint"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("run_intents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_intents_key_fingerprint"))
    op.drop_table("run_intents")
