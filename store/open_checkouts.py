"""A buyer's open checkout, found again: what a pay link opened a second time leads to.

A pay link starts a checkout only when the buyer opens it; opening it again (a second tap,
a reload, the same card a minute later) must lead to the checkout already holding the keys,
not reserve more. An open checkout is a pending order of that buyer, product, quantity and
provider, taken with the same coupon code (or none), whose payment page exists and whose
reservation still has time to run.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import ScalarSelect, select
from sqlalchemy.ext.asyncio import AsyncSession

from store.coupons import normalise
from store.db import Database
from store.models import Coupon, Order, OrderStatus

# A checkout about to lapse is not worth sending a buyer to: they could not finish paying.
_TIME_TO_PAY = timedelta(minutes=2)


async def open_checkout_url(
    db: Database,
    *,
    buyer_id: int,
    product_id: int,
    quantity: int,
    provider: str,
    coupon: str | None = None,
    now: datetime | None = None,
) -> str | None:
    """The payment page of the buyer's open checkout for exactly this purchase, if any."""
    usable_until = (now or datetime.now(UTC)) + _TIME_TO_PAY

    async def work(session: AsyncSession) -> str | None:
        return await session.scalar(
            select(Order.checkout_url)
            .where(
                Order.buyer_id == buyer_id,
                Order.product_id == product_id,
                Order.quantity == quantity,
                Order.provider == provider,
                Order.coupon_id == _coupon_id(coupon) if coupon else Order.coupon_id.is_(None),
                Order.status == OrderStatus.PENDING,
                Order.checkout_url.is_not(None),
                Order.reserved_until > usable_until,
            )
            .order_by(Order.id.desc())
            .limit(1)
        )

    return await db.read(work)


def _coupon_id(code: str) -> ScalarSelect[int]:
    return select(Coupon.id).where(Coupon.code == normalise(code)).scalar_subquery()
