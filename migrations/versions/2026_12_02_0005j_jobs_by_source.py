"""collection jobs name their usage source: `source` (the kind of row the job becomes, every
existing job an Assistants run's), `object_id` and `object_json` for the run's id and JSON,
`thread_id` only where the source has threads; one job per (source, object_id). A next source
(the Batch API) adds its jobs, and its own columns by a migration of its own.
Written by hand after the model change, checked by `alembic check`.

Revision ID: 0005j
Revises: 0005r
Create Date: 2026-12-02 10:40:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005j"
down_revision: str | Sequence[str] | None = "0005r"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("collection_jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "source", sa.String(length=64), server_default="assistants.run", nullable=False
            )
        )
        batch_op.drop_constraint("uq_collection_jobs_run_id", type_="unique")
        batch_op.alter_column(
            "run_id",
            new_column_name="object_id",
            existing_type=sa.String(length=255),
            existing_nullable=False,
        )
        batch_op.alter_column(
            "run_json",
            new_column_name="object_json",
            existing_type=sa.Text(),
            existing_nullable=False,
        )
        batch_op.alter_column("thread_id", existing_type=sa.String(length=255), nullable=True)
    # A batch of its own: SQLite's copy of the table drops a constraint made in the batch that
    # adds or renames its columns.
    with op.batch_alter_table("collection_jobs", schema=None) as batch_op:
        batch_op.create_unique_constraint(
            "uq_collection_jobs_source_object_id", ["source", "object_id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("collection_jobs", schema=None) as batch_op:
        batch_op.drop_constraint("uq_collection_jobs_source_object_id", type_="unique")
        batch_op.alter_column("thread_id", existing_type=sa.String(length=255), nullable=False)
        batch_op.alter_column(
            "object_json",
            new_column_name="run_json",
            existing_type=sa.Text(),
            existing_nullable=False,
        )
        batch_op.alter_column(
            "object_id",
            new_column_name="run_id",
            existing_type=sa.String(length=255),
            existing_nullable=False,
        )
        batch_op.drop_column("source")
    with op.batch_alter_table("collection_jobs", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_collection_jobs_run_id", ["run_id"])
