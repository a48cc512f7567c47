"""keys.imported_at is its batch's created_at: drop the copy

Every key of a batch carried the batch's time, a million copies of a value the
import_batches row already holds (and a per-row conversion on every import).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 15:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("keys") as batch_op:
        batch_op.drop_column("imported_at")


def downgrade() -> None:
    with op.batch_alter_table("keys") as batch_op:
        batch_op.add_column(sa.Column("imported_at", sa.DateTime(), nullable=True))
    op.execute(
        "UPDATE keys SET imported_at = "
        "(SELECT created_at FROM import_batches WHERE import_batches.id = keys.batch_id)"
    )
    with op.batch_alter_table("keys") as batch_op:
        batch_op.alter_column("imported_at", nullable=False)
