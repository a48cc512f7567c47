"""A price per payment provider; the payment ledger unique per provider

Telegram Stars prices a product in Stars, apart from its card price: `products.prices`
holds the prices of providers that have a currency of their own. A Telegram charge id and
a Stripe event id come from different spaces, so the ledger is unique on the pair.

Revision ID: 0005
Revises: 0002
Create Date: 2026-11-27 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("products") as batch_op:
        batch_op.add_column(sa.Column("prices", sa.JSON(), nullable=False, server_default="{}"))
    with op.batch_alter_table("products") as batch_op:
        batch_op.alter_column("prices", server_default=None)
    with op.batch_alter_table("payment_events") as batch_op:
        batch_op.drop_constraint("uq_payment_events_event_id", type_="unique")
        batch_op.create_unique_constraint(
            "uq_payment_events_provider_event_id", ["provider", "event_id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("payment_events") as batch_op:
        batch_op.drop_constraint("uq_payment_events_provider_event_id", type_="unique")
        batch_op.create_unique_constraint("uq_payment_events_event_id", ["event_id"])
    with op.batch_alter_table("products") as batch_op:
        batch_op.drop_column("prices")
