"""Reports for the seller: orders and revenue over recent periods."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from store.db import Database
from store.models import Delivery, DeliveryStatus, Order, OrderStatus

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
