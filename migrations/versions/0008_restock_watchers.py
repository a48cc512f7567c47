""" "Notify me" on sold-out products: restock_watchers, and restock notices in the outbox
(a delivery that names a product instead of an order)

Revision ID: 0008
Revises: 0003
Create Date: 2026-12-02 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "restock_watchers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("buyer_id", sa.BigInteger(), nullable=False),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("notified_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["product_id"],
            ["products.id"],
            name=op.f("fk_restock_watchers_product_id_products"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_restock_watchers")),
        sa.UniqueConstraint(
            "buyer_id", "product_id", name=op.f("uq_restock_watchers_buyer_id_product_id")
        ),
    )
    op.create_index(
        op.f("ix_restock_watchers_product_id"), "restock_watchers", ["product_id"], unique=False
    )
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.alter_column("order_id", existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column("product_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            op.f("fk_deliveries_product_id_products"), "products", ["product_id"], ["id"]
        )


def downgrade() -> None:
    op.execute("DELETE FROM deliveries WHERE order_id IS NULL")
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.drop_constraint(op.f("fk_deliveries_product_id_products"), type_="foreignkey")
        batch_op.drop_column("product_id")
        batch_op.alter_column("order_id", existing_type=sa.Integer(), nullable=False)
    op.drop_index(op.f("ix_restock_watchers_product_id"), table_name="restock_watchers")
    op.drop_table("restock_watchers")
