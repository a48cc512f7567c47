"""Looking orders up for admins: one order's whole story, and finding orders by what a seller
has in hand (an order id, a buyer's id or @username, or a key a buyer pasted).

A key is found by its digest (the HMAC the dedup index already holds), never by decrypting
the table; nothing returned here carries key text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from store.buyers import BuyerView, view_of
from store.db import Database
from store.errors import NotFound
from store.models import (
    Buyer,
    Delivery,
    Key,
    KeyReport,
    KeyReportStatus,
    Order,
    PaymentEvent,
    Product,
    Reveal,
)

_FOUND_LIMIT = 20


@dataclass(frozen=True, slots=True)
class OrderCard:
    id: int
    sku: str
    product_name: str
    quantity: int
    amount_minor: int
    currency: str
    status: str
    provider: str
    created_at: datetime
    paid_at: datetime | None
    buyer: BuyerView | None
    keys: int  # how many keys the order holds (sold or revoked), never what they are
    payments: tuple[tuple[str, datetime], ...]  # provider event type, when
    deliveries: tuple[tuple[str, str, int, datetime | None], ...]  # kind, status, attempts, sent
    reveals: tuple[tuple[str, datetime], ...]  # how, when
    open_reports: tuple[int, ...] = ()  # ids of the buyer's reports of a key, not yet answered


@dataclass(frozen=True, slots=True)
class FoundOrder:
    id: int
    sku: str
    quantity: int
    status: str
    buyer_id: int
    created_at: datetime


async def order_card(db: Database, order_id: int) -> OrderCard:
    """Everything about one order an admin needs to answer a buyer; NotFound if none."""

    async def work(session: AsyncSession) -> OrderCard:
        row = (
            await session.execute(
                select(Order, Product)
                .join(Product, Product.id == Order.product_id)
                .where(Order.id == order_id)
            )
        ).first()
        if row is None:
            raise NotFound(f"no order #{order_id}")
        order, product = row
        buyer = await session.get(Buyer, order.buyer_id)
        keys = len(
            (
                await session.scalars(
                    select(Key.id).where(
                        or_(Key.order_id == order.id, Key.id == order.shared_key_id)
                    )
                )
            ).all()
        )
        payments = await session.execute(
            select(PaymentEvent.type, PaymentEvent.received_at)
            .where(PaymentEvent.order_id == order.id)
            .order_by(PaymentEvent.id)
        )
        deliveries = await session.execute(
            select(Delivery.kind, Delivery.status, Delivery.attempts, Delivery.sent_at)
            .where(Delivery.order_id == order.id)
            .order_by(Delivery.id)
        )
        reveals = await session.execute(
            select(Reveal.how, Reveal.revealed_at)
            .where(Reveal.order_id == order.id)
            .order_by(Reveal.id)
        )
        open_reports = await session.scalars(
            select(KeyReport.id)
            .where(KeyReport.order_id == order.id, KeyReport.status == KeyReportStatus.OPEN)
            .order_by(KeyReport.id)
        )
        return OrderCard(
            id=order.id,
            sku=product.sku,
            product_name=product.name,
            quantity=order.quantity,
            amount_minor=order.amount_minor,
            currency=order.currency,
            status=order.status,
            provider=order.provider,
            created_at=order.created_at,
            paid_at=order.paid_at,
            buyer=view_of(buyer) if buyer else None,
            keys=keys,
            payments=tuple(tuple(r) for r in payments),
            deliveries=tuple(tuple(r) for r in deliveries),
            reveals=tuple(tuple(r) for r in reveals),
            open_reports=tuple(open_reports),
        )

    return await db.read(work)


async def find_orders(
    db: Database,
    *,
    order_or_buyer: int | None = None,
    username: str | None = None,
    key_digest: bytes | None = None,
) -> list[FoundOrder]:
    """Orders with this id or of this buyer, of the buyer with this @username, or holding
    the key with this digest; newest first."""

    async def work(session: AsyncSession) -> list[FoundOrder]:
        query = select(Order, Product.sku).join(Product, Product.id == Order.product_id)
        if order_or_buyer is not None:
            query = query.where(or_(Order.id == order_or_buyer, Order.buyer_id == order_or_buyer))
        elif username is not None:
            buyer_ids = select(Buyer.id).where(Buyer.username == username.lstrip("@").lower())
            query = query.where(Order.buyer_id.in_(buyer_ids))
        elif key_digest is not None:
            keys = select(Key.id).where(Key.digest == key_digest)
            holders = select(Key.order_id).where(Key.digest == key_digest)
            query = query.where(or_(Order.id.in_(holders), Order.shared_key_id.in_(keys)))
        else:
            return []
        rows = await session.execute(query.order_by(Order.id.desc()).limit(_FOUND_LIMIT))
        return [
            FoundOrder(o.id, sku, o.quantity, o.status, o.buyer_id, o.created_at) for o, sku in rows
        ]

    return await db.read(work)
