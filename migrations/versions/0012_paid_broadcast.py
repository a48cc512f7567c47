"""Paid broadcast: messages sent with Telegram's allow_paid_broadcast, per day

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 22:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "paid_broadcasts",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("messages", sa.Integer(), nullable=False),
        sa.Column("beyond_free", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_paid_broadcasts")),
    )


def downgrade() -> None:
    op.drop_table("paid_broadcasts")
