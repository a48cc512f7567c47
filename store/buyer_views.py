"""What a buyer sees of their orders: the list, one order, and their keys shown once more.

Every read here is scoped to the buyer asking, so one buyer never sees another's order
(NotFound, as if it did not exist). Checkout links are shown only while an order is open.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from store import allocation
from store.audit import audit
from store.db import Database
from store.errors import NotFound, OrderNotPayable
from store.models import Delivery, DeliveryKind, DeliveryStatus, Order, OrderStatus, Product


@dataclass(frozen=True, slots=True)
class OrderView:
    id: int
    sku: str
    product_name: str
    quantity: int
    amount_minor: int
    currency: str
    status: OrderStatus
    created_at: datetime
    paid_at: datetime | None
    checkout_url: str | None
    buyer_id: int


async def buyer_orders(
    db: Database, buyer_id: int, language: str, *, limit: int = 10
) -> list[OrderView]:
    """A buyer's latest orders, newest first."""

    async def work(session: AsyncSession) -> list[OrderView]:
        rows = await session.execute(
            select(Order, Product)
            .join(Product, Product.id == Order.product_id)
            .where(Order.buyer_id == buyer_id)
            .order_by(Order.id.desc())
            .limit(limit)
        )
        return [_order_view(o, p, language) for o, p in rows]

    return await db.read(work)


async def buyer_order(db: Database, order_id: int, buyer_id: int, language: str) -> OrderView:
    """One of the buyer's own orders; NotFound for anyone else's."""

    async def work(session: AsyncSession) -> OrderView:
        row = (
            await session.execute(
                select(Order, Product)
                .join(Product, Product.id == Order.product_id)
                .where(Order.id == order_id, Order.buyer_id == buyer_id)
            )
        ).first()
        if row is None:
            raise NotFound("no such order")
        return _order_view(row[0], row[1], language)

    return await db.read(work)


async def show_keys_again(
    db: Database,
    order_id: int,
    buyer_id: int,
    *,
    now: datetime | None = None,
    admin_id: int | None = None,
) -> int:
    """Queue the order's keys to be shown to its buyer once more; return the delivery id.

    A request while one is already queued returns that one instead of queueing another.
    An admin's request (`admin_id`, resending from the order card) is audited.
    """

    async def work(session: AsyncSession) -> int:
        order = await session.scalar(
            select(Order).where(Order.id == order_id, Order.buyer_id == buyer_id)
        )
        if order is None:
            raise NotFound("no such order")
        # A disputed order's keys are not shown again: the buyer says they never had them.
        if order.status != OrderStatus.FULFILLED:
            raise OrderNotPayable(f"order {order_id} has no keys to show")
        queued = await session.scalar(
            select(Delivery.id).where(
                Delivery.order_id == order.id,
                Delivery.kind == DeliveryKind.RESHOW,
                Delivery.status == DeliveryStatus.QUEUED,
            )
        )
        if admin_id is not None:
            session.add(audit(admin_id, "order.resend_keys", str(order_id)))
        if queued is not None:
            return queued
        delivery = allocation.delivery(order, DeliveryKind.RESHOW, now or datetime.now(UTC))
        session.add(delivery)
        await session.flush()
        return delivery.id

    return await db.write(work)


def _order_view(order: Order, product: Product, language: str) -> OrderView:
    return OrderView(
        id=order.id,
        sku=product.sku,
        product_name=product.name_in(language),
        quantity=order.quantity,
        amount_minor=order.amount_minor,
        currency=order.currency,
        status=OrderStatus(order.status),
        created_at=order.created_at,
        paid_at=order.paid_at,
        checkout_url=order.checkout_url if order.status == OrderStatus.PENDING else None,
        buyer_id=order.buyer_id,
    )
