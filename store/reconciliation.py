"""What reconciliation asks the store: which orders to check with their provider, and when.

The read side of the payment path, plus the two housekeeping writes reconciliation owns
(postponing a check, cancelling orphaned orders). Applying what a provider answers is a
transition and lives in store/orders.py (`confirm`, `fulfil`, `close_unpaid`, `record_refund`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from store import allocation, coupons
from store.db import Database
from store.errors import NotFound, OrderNotPayable
from store.models import Order, OrderStatus, PaymentEvent
from store.order_rows import Pending, as_pending, gateway_for, pending_by_id
from store.payments import Payment, PaymentGateway

# A checkout the app started but never recorded (a crash in between) is cancelled after
# this long: nobody was ever shown its payment link, so nobody can have paid it.
ORPHAN_GRACE = timedelta(minutes=2)
# Reconciliation asks the provider this long after a checkout should have closed.
CHECK_GRACE = timedelta(minutes=1)


async def refunds_due(db: Database) -> list[Pending]:
    """Orders whose money must go back because there was nothing to give."""

    async def work(session: AsyncSession) -> list[Pending]:
        orders = await session.scalars(
            select(Order).where(Order.status == OrderStatus.REFUND_PENDING).order_by(Order.id)
        )
        return [as_pending(o) for o in orders]

    return await db.read(work)


async def unrecorded(db: Database, provider: str, event_ids: list[str]) -> set[str]:
    """Which of a provider's event ids the ledger lacks."""

    async def work(session: AsyncSession) -> set[str]:
        known: set[str] = set()
        for start in range(0, len(event_ids), 500):
            chunk = event_ids[start : start + 500]
            known.update(
                await session.scalars(
                    select(PaymentEvent.event_id).where(
                        PaymentEvent.provider == provider, PaymentEvent.event_id.in_(chunk)
                    )
                )
            )
        return set(event_ids) - known

    return await db.read(work)


async def paid_order(db: Database, order_id: int) -> Pending:
    """A paid order whose money can go back; NotFound or OrderNotPayable (with why) if not."""
    pending = await db.read(pending_by_id, order_id)
    if pending is None:
        raise NotFound(f"no order {order_id}")
    if pending.status == OrderStatus.REFUNDED:
        raise OrderNotPayable(f"order {order_id} is refunded already")
    if pending.payment_ref is None or pending.paid_amount_minor is None:
        raise OrderNotPayable(f"order {order_id} is {pending.status}, not paid")
    return pending


async def order_state(db: Database, order_id: int) -> Pending | None:
    """An order as its provider's adapter sees it: status and payment handles."""
    return await db.read(pending_by_id, order_id)


async def provider_report(
    db: Database, gateways: Mapping[str, PaymentGateway], order_id: int | None
) -> Payment | None:
    """What the provider says about the order's own recorded checkout; None without one.

    The evidence an UNVERIFIED refund or dispute is called again with: it comes from the
    checkout this shop opened, never from anything the event itself claims.
    """
    pending = None if order_id is None else await db.read(pending_by_id, order_id)
    if pending is None or pending.checkout_ref is None:
        return None
    return await gateway_for(gateways, pending).checkout_status(order_id, pending.checkout_ref)


async def due_for_check(
    db: Database, *, now: datetime | None = None, limit: int = 100
) -> list[Pending]:
    """Open orders whose checkout should have closed by now, oldest first."""

    async def work(session: AsyncSession) -> list[Pending]:
        orders = await session.scalars(
            select(Order)
            .where(
                Order.status == OrderStatus.PENDING, Order.check_after <= (now or datetime.now(UTC))
            )
            .order_by(Order.check_after)
            .limit(limit)
        )
        return [as_pending(o) for o in orders]

    return await db.read(work)


async def next_check(db: Database) -> datetime | None:
    """When the earliest open order is due for a check (its reservation may end before the
    provider's checkout does: reconciliation then closes it on time)."""

    async def work(session: AsyncSession) -> datetime | None:
        return await session.scalar(
            select(func.min(Order.check_after)).where(Order.status == OrderStatus.PENDING)
        )

    return await db.read(work)


async def postpone_check(db: Database, order_id: int, until: datetime) -> None:
    async def work(session: AsyncSession) -> None:
        order = await session.get(Order, order_id)
        if order is not None and order.status == OrderStatus.PENDING:
            order.check_after = until

    await db.write(work)


async def cancel_orphans(db: Database, *, now: datetime | None = None) -> list[int]:
    """Cancel orders whose checkout was never recorded (the process died in between)."""

    async def work(session: AsyncSession) -> list[int]:
        moment = now or datetime.now(UTC)
        orders = (
            await session.scalars(
                select(Order)
                .where(
                    Order.status == OrderStatus.PENDING,
                    Order.provider_ref.is_(None),
                    Order.created_at < moment - ORPHAN_GRACE,
                )
                .with_for_update(skip_locked=True)
            )
        ).all()
        for order in orders:
            await coupons.release(session, order)
            await allocation.release(session, order.id)
            order.status = OrderStatus.CANCELLED
            order.closed_at = moment
        return [o.id for o in orders]

    return await db.write(work)
