"""A price per payment provider; the payment ledger unique per provider; subscriptions

Telegram Stars prices a product in Stars, apart from its card price: `products.prices`
holds the prices of providers that have a currency of their own. A Telegram charge id and
a Stripe event id come from different spaces, so the ledger is unique on the pair. A
subscription product (`products.every`) is paid each period, and each paid period is an
order of its own (`orders.subscription_id`) under one `subscriptions` row.

Revision ID: 0005
Revises: 0008
Create Date: 2026-11-27 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("products") as batch_op:
        batch_op.add_column(sa.Column("prices", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("every", sa.String(length=8), nullable=True))
    with op.batch_alter_table("products") as batch_op:
        batch_op.alter_column("prices", server_default=None)
    with op.batch_alter_table("orders") as batch_op:
        batch_op.add_column(sa.Column("subscription_id", sa.Integer(), nullable=True))
        batch_op.create_index("ix_orders_subscription_id", ["subscription_id"])
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("buyer_id", sa.BigInteger(), nullable=False),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("first_order_id", sa.Integer(), nullable=False),
        sa.Column("payment_ref", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("current_period_end", sa.DateTime(), nullable=True),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["buyer_id"], ["buyers.id"], name=op.f("fk_subscriptions_buyer_id_buyers")
        ),
        sa.ForeignKeyConstraint(
            ["first_order_id"], ["orders.id"], name=op.f("fk_subscriptions_first_order_id_orders")
        ),
        sa.ForeignKeyConstraint(
            ["product_id"], ["products.id"], name=op.f("fk_subscriptions_product_id_products")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
        sa.UniqueConstraint("first_order_id", name=op.f("uq_subscriptions_first_order_id")),
    )
    op.create_index("ix_subscriptions_buyer_id", "subscriptions", ["buyer_id"])
    op.create_index(
        "ix_subscriptions_status_current_period_end",
        "subscriptions",
        ["status", "current_period_end"],
    )
    with op.batch_alter_table("payment_events") as batch_op:
        batch_op.drop_constraint("uq_payment_events_event_id", type_="unique")
        batch_op.create_unique_constraint(
            "uq_payment_events_provider_event_id", ["provider", "event_id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("payment_events") as batch_op:
        batch_op.drop_constraint("uq_payment_events_provider_event_id", type_="unique")
        batch_op.create_unique_constraint("uq_payment_events_event_id", ["event_id"])
    op.drop_index("ix_subscriptions_status_current_period_end", table_name="subscriptions")
    op.drop_index("ix_subscriptions_buyer_id", table_name="subscriptions")
    op.drop_table("subscriptions")
    with op.batch_alter_table("orders") as batch_op:
        batch_op.drop_index("ix_orders_subscription_id")
        batch_op.drop_column("subscription_id")
    with op.batch_alter_table("products") as batch_op:
        batch_op.drop_column("every")
        batch_op.drop_column("prices")
