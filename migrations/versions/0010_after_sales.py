"""After-sales: review thresholds per product, automatic key replacement, key_reports

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-03 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("products") as batch_op:
        batch_op.add_column(sa.Column("review_quantity", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("review_amount_minor", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("auto_replace", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "key_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("buyer_id", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("decided_by", sa.BigInteger(), nullable=True),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_key_reports_order_id_orders")
        ),
        sa.ForeignKeyConstraint(["key_id"], ["keys.id"], name=op.f("fk_key_reports_key_id_keys")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_key_reports")),
    )
    op.create_index(op.f("ix_key_reports_order_id"), "key_reports", ["order_id"], unique=False)
    op.create_index(op.f("ix_key_reports_status_id"), "key_reports", ["status", "id"], unique=False)
    op.create_index(
        "uq_key_reports_open_key",
        "key_reports",
        ["key_id"],
        unique=True,
        sqlite_where=sa.text("status = 'open'"),
        postgresql_where=sa.text("status = 'open'"),
    )


def downgrade() -> None:
    op.drop_index("uq_key_reports_open_key", table_name="key_reports")
    op.drop_index(op.f("ix_key_reports_status_id"), table_name="key_reports")
    op.drop_index(op.f("ix_key_reports_order_id"), table_name="key_reports")
    op.drop_table("key_reports")
    with op.batch_alter_table("products") as batch_op:
        batch_op.drop_column("auto_replace")
        batch_op.drop_column("review_amount_minor")
        batch_op.drop_column("review_quantity")
