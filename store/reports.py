"""Reports for the seller: orders and revenue over recent periods."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from store.db import Database
from store.models import Delivery, DeliveryStatus, Order, OrderStatus, Product

# Paid orders whose money the seller keeps (refunds are not revenue).
_EARNING = (OrderStatus.FULFILLED, OrderStatus.BACKORDERED, OrderStatus.DISPUTED)
_ATTENTION = (OrderStatus.REVIEW, OrderStatus.REFUND_PENDING)


@dataclass(frozen=True, slots=True)
class Period:
    days: int  # 1 is "today" (since midnight UTC)
    orders: int
    revenue: dict[str, int] = field(default_factory=dict)  # currency -> minor units


@dataclass(frozen=True, slots=True)
class Stats:
    periods: tuple[Period, ...]
    attention: int  # orders in review or owed a refund, plus undeliverable messages


async def sales(db: Database, *, now: datetime | None = None) -> Stats:
    """Paid orders and revenue per currency for today, the last 7 and the last 30 days."""
    now = now or datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    windows = ((1, midnight), (7, now - timedelta(days=7)), (30, now - timedelta(days=30)))

    async def work(session: AsyncSession) -> Stats:
        periods = []
        for days, since in windows:
            rows = (
                await session.execute(
                    select(Order.currency, func.count(), func.sum(Order.amount_minor))
                    .where(Order.paid_at >= since, Order.status.in_(_EARNING))
                    .group_by(Order.currency)
                )
            ).all()
            periods.append(
                Period(days, sum(n for _, n, _ in rows), {c: int(total) for c, _, total in rows})
            )
        attention = await session.scalar(select(func.count()).where(Order.status.in_(_ATTENTION)))
        attention += await session.scalar(
            select(func.count()).where(Delivery.status == DeliveryStatus.UNDELIVERABLE)
        )
        return Stats(tuple(periods), attention)

    return await db.read(work)


@dataclass(frozen=True, slots=True)
class Day:
    day: date
    currency: str
    orders: int
    revenue_minor: int


async def daily(
    db: Database, *, days: int = 30, sku: str | None = None, now: datetime | None = None
) -> list[Day]:
    """Paid orders and revenue per day (UTC) and currency over the last `days` days."""
    now = now or datetime.now(UTC)
    since = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)

    async def work(session: AsyncSession) -> list[Day]:
        query = select(Order.paid_at, Order.currency, Order.amount_minor).where(
            Order.paid_at >= since, Order.status.in_(_EARNING)
        )
        if sku is not None:
            query = query.join(Product, Product.id == Order.product_id).where(Product.sku == sku)
        totals: dict[tuple[date, str], list[int]] = {}
        # Grouped here rather than in SQL: day truncation is spelled differently per database.
        for paid_at, currency, amount in await session.execute(query):
            entry = totals.setdefault((paid_at.date(), currency), [0, 0])
            entry[0] += 1
            entry[1] += amount
        return [Day(d, c, n, m) for (d, c), (n, m) in sorted(totals.items())]

    return await db.read(work)


@dataclass(frozen=True, slots=True)
class OrderRow:
    """One order for the seller's books: no key, ever."""

    id: int
    created_at: datetime
    paid_at: datetime | None
    status: str
    sku: str
    product: str
    quantity: int
    amount_minor: int
    currency: str
    provider: str
    buyer_id: int


async def orders_between(db: Database, start: datetime, end: datetime) -> list[OrderRow]:
    """Every order placed in [start, end), oldest first."""

    async def work(session: AsyncSession) -> list[OrderRow]:
        rows = await session.execute(
            select(Order, Product.sku, Product.name)
            .join(Product, Product.id == Order.product_id)
            .where(Order.created_at >= start, Order.created_at < end)
            .order_by(Order.id)
        )
        return [
            OrderRow(
                o.id,
                o.created_at,
                o.paid_at,
                o.status,
                sku,
                name,
                o.quantity,
                o.amount_minor,
                o.currency,
                o.provider,
                o.buyer_id,
            )
            for o, sku, name in rows
        ]

    return await db.read(work)
