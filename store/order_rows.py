"""The order row and the payment ledger as every order transition shares them.

Small steps inside a caller's transaction, used by the state machine (store/orders.py),
reconciliation (store/reconciliation.py) and the after-sales decisions (store/review.py,
store/key_reports.py): lock an order, record a provider event exactly once, tell whether a
provider's report is about the order's own checkout, and see an order as its provider's
adapter and reconciliation see it (`Pending`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from store.buyers import dialect_insert
from store.errors import PaymentUnavailable
from store.models import Order, OrderStatus, PaymentEvent
from store.payments import Event, PaymentGateway


@dataclass(frozen=True, slots=True)
class Pending:
    """An order reconciliation must ask its provider about."""

    order_id: int
    provider: str
    checkout_ref: str | None
    status: OrderStatus
    payment_ref: str | None
    paid_amount_minor: int | None


async def lock_order(session: AsyncSession, order_id: int | None) -> Order | None:
    """The order, locked for update (PostgreSQL) and re-read; None if there is none."""
    if order_id is None:
        return None
    return await session.scalar(
        select(Order)
        .where(Order.id == order_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


async def record_event(
    session: AsyncSession, event: Event, order_id: int | None, now: datetime
) -> bool:
    """Add the event to the ledger; False if it was there already."""
    insert = dialect_insert(session)
    inserted = await session.scalar(
        insert(PaymentEvent)
        .values(
            provider=event.provider,
            event_id=event.id,
            type=event.type,
            order_id=order_id,
            received_at=now,
        )
        .on_conflict_do_nothing(index_elements=[PaymentEvent.provider, PaymentEvent.event_id])
        .returning(PaymentEvent.id)
    )
    return inserted is not None


def own_checkout(order: Order, checkout_ref: str | None) -> bool:
    """Whether a provider's report is about this order's own checkout (not another shop's)."""
    return order.provider_ref is not None and order.provider_ref == checkout_ref


async def pending_by_id(session: AsyncSession, order_id: int) -> Pending | None:
    """The order as reconciliation sees it; None if there is none."""
    order = await session.get(Order, order_id)
    return None if order is None else as_pending(order)


def as_pending(order: Order) -> Pending:
    """An order row as reconciliation sees it."""
    return Pending(
        order_id=order.id,
        provider=order.provider,
        checkout_ref=order.provider_ref,
        status=OrderStatus(order.status),
        payment_ref=order.payment_ref,
        paid_amount_minor=order.paid_amount_minor,
    )


def gateway_for(gateways: Mapping[str, PaymentGateway], pending: Pending) -> PaymentGateway:
    """The order's own provider; PaymentUnavailable if it is not set up here."""
    gateway = gateways.get(pending.provider)
    if gateway is None:
        raise PaymentUnavailable(f"{pending.provider} payments are not set up")
    return gateway
