""" "Notify me": buyers waiting for a sold-out product, told once when it is restocked.

A watcher is one row per buyer and product (unique). A restock that leaves stock to buy
marks the product's waiting watchers told and queues one `restocked` delivery for each, in
one transaction: the mark is a conditional update whose RETURNING names exactly the rows it
changed, so two restocks at once tell each watcher once. The delivery worker sends those
notices only when no key delivery is due (store/deliveries.py `claim`), so they are paced
and never ahead of keys. Pressing "Notify me" again after being told waits for the next.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from store.buyers import dialect_insert
from store.db import Database
from store.errors import NotFound
from store.models import Delivery, DeliveryKind, DeliveryStatus, Product, RestockWatcher


async def watch(db: Database, buyer_id: int, product_id: int) -> None:
    """Tell this buyer at the product's next restock (once, however often they press)."""
    now = datetime.now(UTC)

    async def work(session: AsyncSession) -> None:
        if await session.scalar(select(Product.id).where(Product.id == product_id)) is None:
            raise NotFound("no such product")
        statement = dialect_insert(session)(RestockWatcher).values(
            buyer_id=buyer_id, product_id=product_id, created_at=now, notified_at=None
        )
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=[RestockWatcher.buyer_id, RestockWatcher.product_id],
                set_={"created_at": now, "notified_at": None},
                where=RestockWatcher.notified_at.is_not(None),  # still waiting: as it was
            )
        )

    await db.write(work)


async def restocked(db: Database, sku: str, *, now: datetime | None = None) -> int:
    """Queue one notice for each buyer waiting for `sku`; how many were queued."""
    now = now or datetime.now(UTC)

    async def work(session: AsyncSession) -> int:
        product_id = await session.scalar(select(Product.id).where(Product.sku == sku))
        told = (
            await session.scalars(
                update(RestockWatcher)
                .where(
                    RestockWatcher.product_id == product_id, RestockWatcher.notified_at.is_(None)
                )
                .values(notified_at=now)
                .returning(RestockWatcher.buyer_id)
                .execution_options(synchronize_session=False)
            )
        ).all()
        if told:
            connection = await session.connection()
            await connection.execute(
                Delivery.__table__.insert(),
                [
                    {
                        "order_id": None,
                        "product_id": product_id,
                        "kind": DeliveryKind.RESTOCKED,
                        "chat_id": buyer,
                        "status": DeliveryStatus.QUEUED,
                        "attempts": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                    }
                    for buyer in told
                ],
            )
        return len(told)

    return await db.write(work)
