"""Buyers: who has talked to the shop, in which language, and who may not buy."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from store.db import Database
from store.models import Buyer


def dialect_insert(session: AsyncSession):  # returns the dialect's insert()
    """`insert` with ON CONFLICT support for whichever database the session talks to."""
    return postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert


async def touch(session: AsyncSession, buyer_id: int, language: str, now: datetime) -> bool:
    """Record that a buyer was seen; return whether they are blacklisted.

    On PostgreSQL the upsert also locks the buyer's row until the transaction ends, which
    serialises one buyer's concurrent checkouts so their limits cannot be raced.
    """
    insert = dialect_insert(session)
    statement = (
        insert(Buyer)
        .values(id=buyer_id, language=language, blacklisted=False, first_seen=now, last_seen=now)
        .on_conflict_do_update(
            index_elements=[Buyer.id], set_={"last_seen": now, "language": language}
        )
        .returning(Buyer.blacklisted)
    )
    return bool(await session.scalar(statement))


async def remember(db: Database, buyer_id: int, language: str) -> bool:
    """Record a buyer's visit and language; return whether they are blacklisted."""
    return await db.write(touch, buyer_id, language, datetime.now(UTC))
