"""vault: the key check value and the wrapped digest key

A database now records which key encryption key it expects (its check value), so a wrong
KEY_ENCRYPTION_KEY is refused at start instead of importing every key a second time, and
keeps its duplicate-digest key encrypted under that key, so digests survive key rotation.
The record is written by the first command that opens the database with a key
(store/vault.py), not here: a migration has no key.

Revision ID: 0003
Revises: 0007
Create Date: 2026-11-27 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "vault",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("key_check", sa.LargeBinary(length=32), nullable=False),
        sa.Column("digest_key", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vault")),
    )


def downgrade() -> None:
    op.drop_table("vault")
