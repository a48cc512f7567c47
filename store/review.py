"""The review queue: paid orders an admin approves (keys go out) or rejects (money goes back).

An order lands in review when it is paid (store/orders.py) at or above its product's review
quantity or amount, or paid an amount or currency other than the order's. It keeps its keys
reserved while it waits: reservations are only ever released by a transition, and nothing
but a decision here moves an order out of review (the expiry, orphan and reconciliation
paths all look at pending orders only).

A decision is one conditional UPDATE of the order's status from `review`, whose row count
is checked: of two admins pressing at once, one decides and the other is told it was
decided already. Approving sells the reserved keys and queues their delivery; rejecting
releases them and makes the order owed a refund (`refund_pending`), which the caller then
makes through the order's own provider (or the refund job does, on its next pass). Both are
audited in the same transaction.

Orders placed over the business API have their own review (store/clients.py, which returns a
client's balance); they are not in this queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from store.allocation import delivery, fill_order, release, stock_left
from store.audit import audit
from store.db import Database
from store.errors import NotFound, OutOfStock, StoreError
from store.models import DeliveryKind, Order, OrderStatus, Product
from store.order_rows import lock_order
from store.orders import Outcome, Result


class AlreadyDecided(StoreError):
    """The order is no longer waiting for review (another admin decided it)."""


@dataclass(frozen=True, slots=True)
class ReviewItem:
    order_id: int
    buyer_id: int
    sku: str
    product_name: str
    quantity: int
    amount_minor: int
    currency: str
    provider: str
    paid_amount_minor: int | None
    paid_currency: str | None
    paid_at: datetime | None

    @property
    def mismatch(self) -> bool:
        """Paid another amount or currency than ordered (else: over a review threshold)."""
        return (
            self.paid_amount_minor != self.amount_minor
            or (self.paid_currency or "").lower() != self.currency
        )


def _in_review():
    return (Order.status == OrderStatus.REVIEW) & Order.client_id.is_(None)


async def waiting(db: Database, *, limit: int = 20) -> list[ReviewItem]:
    """Orders waiting for a decision, oldest payment first."""

    async def work(session: AsyncSession) -> list[ReviewItem]:
        rows = await session.execute(
            select(Order, Product)
            .join(Product, Product.id == Order.product_id)
            .where(_in_review())
            .order_by(Order.paid_at, Order.id)
            .limit(limit)
        )
        return [_item(o, p) for o, p in rows]

    return await db.read(work)


async def get(db: Database, order_id: int) -> ReviewItem:
    """One order in review; NotFound if there is no such order, AlreadyDecided if it left."""

    async def work(session: AsyncSession) -> ReviewItem:
        row = (
            await session.execute(
                select(Order, Product)
                .join(Product, Product.id == Order.product_id)
                .where(Order.id == order_id, Order.client_id.is_(None))
            )
        ).first()
        if row is None:
            raise NotFound(f"no order {order_id}")
        if row[0].status != OrderStatus.REVIEW:
            raise AlreadyDecided(f"order {order_id} is {row[0].status}")
        return _item(*row)

    return await db.read(work)


async def approve(
    db: Database, order_id: int, *, admin_id: int | None, now: datetime | None = None
) -> Result:
    """Fulfil an order in review: its held keys become sold and their delivery is queued.

    AlreadyDecided if it is not in review (any more), NotFound if there is no such order;
    OutOfStock (and nothing changed) if its keys could not be made whole.
    """

    async def work(session: AsyncSession) -> Result:
        moment = now or datetime.now(UTC)
        order = await _claim(session, order_id, OrderStatus.FULFILLED, moment)
        product = await session.get(Product, order.product_id)
        if not await fill_order(session, order, product):
            raise OutOfStock(0)  # the claim is rolled back with the transaction
        order.fulfilled_at = moment
        session.add(delivery(order, DeliveryKind.KEYS, moment))
        session.add(audit(admin_id, "review.approve", str(order.id)))
        return Result(
            Outcome.FULFILLED,
            order.id,
            order.buyer_id,
            product.sku,
            stock_left=await stock_left(session, product),
            low_stock_threshold=product.low_stock_threshold,
            sold=order.quantity,
        )

    return await db.write(work)


async def reject(
    db: Database, order_id: int, *, admin_id: int | None, now: datetime | None = None
) -> Result:
    """Refuse an order in review: its held keys go back on sale and its money is owed back
    (REFUND_DUE: the caller refunds it through the order's provider, else the refund job does).

    AlreadyDecided if it is not in review (any more), NotFound if there is no such order.
    """

    async def work(session: AsyncSession) -> Result:
        order = await _claim(session, order_id, OrderStatus.REFUND_PENDING, now)
        await release(session, order.id)
        session.add(audit(admin_id, "review.reject", str(order.id)))
        product = await session.get(Product, order.product_id)
        return Result(Outcome.REFUND_DUE, order.id, order.buyer_id, product.sku)

    return await db.write(work)


async def _claim(
    session: AsyncSession, order_id: int, status: OrderStatus, now: datetime | None
) -> Order:
    """Move the order out of review, if it is still there; the locked order."""
    moved = await session.execute(
        update(Order)
        .where(Order.id == order_id, _in_review())
        .values(status=status, closed_at=now or datetime.now(UTC))
        .execution_options(synchronize_session=False)
    )
    order = await lock_order(session, order_id)
    if moved.rowcount != 1:
        if order is None or order.client_id is not None:
            raise NotFound(f"no order {order_id}")
        raise AlreadyDecided(f"order {order_id} is {order.status}")
    return order


def _item(order: Order, product: Product) -> ReviewItem:
    return ReviewItem(
        order_id=order.id,
        buyer_id=order.buyer_id,
        sku=product.sku,
        product_name=product.name,
        quantity=order.quantity,
        amount_minor=order.amount_minor,
        currency=order.currency,
        provider=order.provider,
        paid_amount_minor=order.paid_amount_minor,
        paid_currency=order.paid_currency,
        paid_at=order.paid_at,
    )
