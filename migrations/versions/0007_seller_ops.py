"""Running the shop from the chat: product categories and allocation order, buyers' usernames,
chosen language and ban reason

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("products") as batch_op:
        batch_op.add_column(
            sa.Column("category", sa.String(length=64), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("allocation", sa.String(length=10), nullable=False, server_default="oldest")
        )
    with op.batch_alter_table("buyers") as batch_op:
        batch_op.add_column(sa.Column("username", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("language_chosen", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("ban_reason", sa.Text(), nullable=True))
        batch_op.create_index("ix_buyers_username", ["username"])


def downgrade() -> None:
    with op.batch_alter_table("buyers") as batch_op:
        batch_op.drop_index("ix_buyers_username")
        batch_op.drop_column("ban_reason")
        batch_op.drop_column("language_chosen")
        batch_op.drop_column("username")
    with op.batch_alter_table("products") as batch_op:
        batch_op.drop_column("allocation")
        batch_op.drop_column("category")
