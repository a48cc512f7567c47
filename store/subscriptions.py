"""Subscriptions as their buyers and the jobs see them: listing, cancelling, lapsing.

A subscription starts and renews inside the payment's own transaction (`orders.pay_period`);
this module owns what happens between payments. Cancelling only marks it to stop at the end
of the period paid for (the provider is told by the caller); a subscription whose period
ended without a renewal, beyond a grace for a late payment, ends, and its buyer is told
through the outbox. A provider that bills the subscription itself reports a failed period
(`fall_behind`: past due, the buyer is told how to fix it) and the end (`end`), each
recorded in the payment ledger like a payment, so a repeated report changes nothing; a
report about a subscription that is not the one the named order started is ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from store import allocation
from store.db import Database
from store.errors import NotFound, OrderNotPayable
from store.models import (
    DeliveryKind,
    Key,
    KeyStatus,
    Order,
    Product,
    ProductKind,
    Subscription,
    SubscriptionStatus,
)
from store.order_rows import record_event
from store.orders import Outcome, Result
from store.payments import Event


@dataclass(frozen=True, slots=True)
class SubscriptionView:
    id: int
    sku: str
    product_name: str
    every: str | None
    provider: str
    status: SubscriptionStatus
    current_period_end: datetime | None
    cancel_at_period_end: bool
    periods_paid: int


@dataclass(frozen=True, slots=True)
class ToCancel:
    """What the provider needs to stop renewing a subscription."""

    id: int
    provider: str
    payment_ref: str | None


@dataclass(frozen=True, slots=True)
class RenewalShortage:
    """A product whose stock will not cover the renewals due soon."""

    sku: str
    due: int  # renewals due within the window
    available: int  # keys available now


async def renewals_short(
    db: Database, *, within: timedelta, now: datetime | None = None
) -> list[RenewalShortage]:
    """Products whose available keys are fewer than their subscriptions renewing within
    `within` (ones cancelled to stop at the period's end do not count)."""

    async def work(session: AsyncSession) -> list[RenewalShortage]:
        horizon = (now or datetime.now(UTC)) + within
        due_rows = await session.execute(
            select(Product, func.count(Subscription.id))
            .join(Subscription, Subscription.product_id == Product.id)
            .where(
                Subscription.status != SubscriptionStatus.ENDED,
                Subscription.cancel_at_period_end.is_(False),
                Subscription.current_period_end <= horizon,
            )
            .group_by(Product.id)
            .order_by(Product.sku)
        )
        short = []
        for product, due in due_rows.all():
            capped = (
                select(Key.id)
                .where(Key.product_id == product.id, Key.status == KeyStatus.AVAILABLE)
                .limit(1 if product.kind == ProductKind.SHARED else due)
                .subquery()
            )
            available = await session.scalar(select(func.count()).select_from(capped))
            if product.kind == ProductKind.SHARED:
                available = due if available else 0
            if available < due:
                short.append(RenewalShortage(product.sku, due, available))
        return short

    return await db.read(work)


async def buyer_subscriptions(db: Database, buyer_id: int, language: str) -> list[SubscriptionView]:
    """A buyer's subscriptions, newest first, with how many periods each has paid."""

    async def work(session: AsyncSession) -> list[SubscriptionView]:
        renewals = (
            select(func.count())
            .where(Order.subscription_id == Subscription.id, Order.paid_at.is_not(None))
            .scalar_subquery()
        )
        rows = await session.execute(
            select(Subscription, Product, renewals)
            .join(Product, Product.id == Subscription.product_id)
            .where(Subscription.buyer_id == buyer_id)
            .order_by(Subscription.id.desc())
            .limit(20)
        )
        return [
            SubscriptionView(
                id=s.id,
                sku=p.sku,
                product_name=p.name_in(language),
                every=p.every,
                provider=s.provider,
                status=SubscriptionStatus(s.status),
                current_period_end=s.current_period_end,
                cancel_at_period_end=s.cancel_at_period_end,
                periods_paid=1 + n,
            )
            for s, p, n in rows
        ]

    return await db.read(work)


async def to_cancel(db: Database, subscription_id: int, buyer_id: int) -> ToCancel:
    """One of the buyer's own running subscriptions; NotFound for anyone else's."""

    async def work(session: AsyncSession) -> ToCancel:
        s = await session.get(Subscription, subscription_id)
        if s is None or s.buyer_id != buyer_id:
            raise NotFound("no such subscription")
        if s.status == SubscriptionStatus.ENDED:
            raise OrderNotPayable("this subscription has ended already")
        return ToCancel(s.id, s.provider, s.payment_ref)

    return await db.read(work)


async def mark_cancelled(db: Database, subscription_id: int) -> None:
    """The provider will not renew it: it runs to the end of the period paid for."""

    async def work(session: AsyncSession) -> None:
        s = await session.get(Subscription, subscription_id)
        if s is not None:
            s.cancel_at_period_end = True

    await db.write(work)


async def end_lapsed(
    db: Database,
    *,
    grace: timedelta,
    reported: Iterable[str] = (),
    now: datetime | None = None,
    limit: int = 100,
) -> list[int]:
    """End the subscriptions whose paid period ran out `grace` ago without a renewal, and
    queue each buyer's notice; return their ids. Those of the `reported` providers are
    left alone: such a provider retries a failed payment for weeks and says when it ends."""
    reported = list(reported)

    async def work(session: AsyncSession) -> list[int]:
        moment = now or datetime.now(UTC)
        lapsed = (
            await session.scalars(
                select(Subscription)
                .where(
                    Subscription.provider.not_in(reported),
                    Subscription.status != SubscriptionStatus.ENDED,
                    Subscription.current_period_end < moment - grace,
                )
                .order_by(Subscription.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
        for s in lapsed:
            s.status = SubscriptionStatus.ENDED
            s.ended_at = moment
            await _tell_buyer(session, s, DeliveryKind.SUBSCRIPTION_ENDED, moment)
        return [s.id for s in lapsed]

    return await db.write(work)


async def fall_behind(
    db: Database,
    order_id: int,
    subscription_ref: str,
    *,
    payment_ref: str,
    event: Event,
    now: datetime | None = None,
) -> Result:
    """The provider could not collect a period (`payment_ref`) of the subscription begun by
    `order_id`: it is past due and its buyer is told once how to fix it. A failure of a
    period that is paid already (the reports crossed) changes nothing."""

    async def work(session: AsyncSession) -> Result:
        moment = now or datetime.now(UTC)
        found = await _reported(session, order_id, subscription_ref, event, moment)
        if isinstance(found, Result):
            return found
        paid = await session.scalar(
            select(func.count()).where(
                (Order.subscription_id == found.id) | (Order.id == found.first_order_id),
                Order.payment_ref == payment_ref,
            )
        )
        if paid or found.status != SubscriptionStatus.ACTIVE:
            return Result(Outcome.UNCHANGED, order_id, found.buyer_id)
        found.status = SubscriptionStatus.PAST_DUE
        await _tell_buyer(session, found, DeliveryKind.SUBSCRIPTION_PAST_DUE, moment)
        return Result(Outcome.PAST_DUE, order_id, found.buyer_id)

    return await db.write(work)


async def end(
    db: Database,
    order_id: int,
    subscription_ref: str,
    *,
    event: Event,
    now: datetime | None = None,
) -> Result:
    """The provider ended the subscription begun by `order_id`: no more keys, and its buyer
    is told once."""

    async def work(session: AsyncSession) -> Result:
        moment = now or datetime.now(UTC)
        found = await _reported(session, order_id, subscription_ref, event, moment)
        if isinstance(found, Result):
            return found
        if found.status == SubscriptionStatus.ENDED:
            return Result(Outcome.UNCHANGED, order_id, found.buyer_id)
        found.status = SubscriptionStatus.ENDED
        found.ended_at = moment
        await _tell_buyer(session, found, DeliveryKind.SUBSCRIPTION_ENDED, moment)
        return Result(Outcome.ENDED, order_id, found.buyer_id)

    return await db.write(work)


async def _reported(
    session: AsyncSession, order_id: int, subscription_ref: str, event: Event, now: datetime
) -> Subscription | Result:
    """The subscription a provider's report is about, locked; or the Result that ignores
    the report (a repeat, or not this shop's subscription)."""
    if not await record_event(session, event, order_id, now):
        return Result(Outcome.DUPLICATE, order_id)
    found = await session.scalar(
        select(Subscription).where(Subscription.first_order_id == order_id).with_for_update()
    )
    if found is None:
        return Result(Outcome.UNKNOWN_ORDER, order_id)
    if found.provider != event.provider or found.payment_ref != subscription_ref:
        return Result(Outcome.FOREIGN, order_id)
    return found


async def _tell_buyer(
    session: AsyncSession, subscription: Subscription, kind: DeliveryKind, now: datetime
) -> None:
    """Queue a notice about the subscription to its buyer, on its latest period's order."""
    latest = await session.scalar(
        select(Order)
        .where(
            (Order.subscription_id == subscription.id) | (Order.id == subscription.first_order_id)
        )
        .order_by(Order.id.desc())
        .limit(1)
    )
    session.add(allocation.delivery(latest, kind, now))
