"""Orders and their state machine: checkout, payment, release, refund and dispute.

This module is the money -> key path. Every transition is one transaction that locks the
order row (PostgreSQL) or holds the write lock (SQLite), checks the state it expects, and
writes the new state together with its consequences: keys reserved, sold, released or
revoked, and the buyer's message queued in the outbox. A payment is recorded against the
provider's event id in the same transaction, so any number of copies of an event, in any
order, have the effect of one.

    pending --paid--> fulfilled | backordered | refund_pending -> refunded | review
    pending --expired / failed--> expired | cancelled
    fulfilled --refund--> refunded        fulfilled --dispute--> disputed
    pending --dispute before its payment--> disputed (no keys given)
    backordered --restock--> fulfilled

A provider event moves an order only when it is about the order's own checkout (the
session id recorded when the checkout opened) or its own payment (the payment id recorded
when it was paid). Another integration on the same provider account can name our order
ids too: its events are answered FOREIGN and change nothing.

What reconciliation asks before it calls a transition is in store/reconciliation.py, the buyer's
own view of their orders in store/buyer_views.py, and the row-level steps these share (lock
an order, record an event) in store/order_rows.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from store import allocation, coupons
from store.audit import audit
from store.buyers import dialect_insert, touch
from store.catalogue import unit_price
from store.db import Database
from store.errors import (
    Blacklisted,
    CheckoutNotRecorded,
    HoldLimit,
    InvalidInput,
    NotFound,
    OrderNotPayable,
    OutOfStock,
    OverLimit,
    PaymentUnavailable,
    ProductInactive,
    SubscriptionNotStarted,
    TooManyUnpaid,
)
from store.models import (
    Buyer,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    Key,
    KeyStatus,
    Order,
    OrderStatus,
    Product,
    ProductKind,
    Reveal,
    Subscription,
    SubscriptionStatus,
)
from store.order_rows import gateway_for, lock_order, own_checkout, pending_by_id, record_event
from store.payments import CheckoutRequest, CheckoutState, Event, Payment, PaymentGateway
from store.reconciliation import CHECK_GRACE

# Statuses in which an order counts against a buyer's per-product limit.
_HOLDING = (
    OrderStatus.PENDING,
    OrderStatus.FULFILLED,
    OrderStatus.BACKORDERED,
    OrderStatus.REVIEW,
    OrderStatus.DISPUTED,
)


class Outcome(StrEnum):
    FULFILLED = "fulfilled"
    BACKORDERED = "backordered"
    REFUND_DUE = "refund_due"  # paid, nothing to give: the money must go back
    REVIEW = "review"  # paid amount or currency differs from the order
    RELEASED = "released"  # checkout closed unpaid, keys back on sale
    AWAITING = "awaiting"  # a delayed payment method is settling
    REFUNDED = "refunded"
    PARTIAL_REFUND = "partial_refund"
    DISPUTED = "disputed"
    UNCHANGED = "unchanged"  # already in the state the event would bring
    DUPLICATE = "duplicate"  # this event was applied before
    UNKNOWN_ORDER = "unknown_order"
    FOREIGN = "foreign"  # names our order, but not its checkout or payment: ignored
    UNVERIFIED = "unverified"  # the order's payment is not recorded yet: ask the provider
    PAST_DUE = "past_due"  # a subscription's period was not paid: the buyer is told
    ENDED = "ended"  # a subscription ended: the buyer is told, no more keys


@dataclass(frozen=True, slots=True)
class OutOfStockPolicy:
    backorder: bool  # False: refund


@dataclass(frozen=True, slots=True)
class CheckoutPolicy:
    max_unpaid: int
    ttl: timedelta
    # What one buyer's unpaid checkouts may hold of one product: the larger of a number of
    # keys and a share of the keys on sale, so small shops and small orders are untouched.
    hold_max_units: int = 10
    hold_max_share: float = 0.25


@dataclass(frozen=True, slots=True)
class CheckoutResult:
    order_id: int
    url: str | None  # None: the provider put its pay button in the buyer's chat itself
    product_name: str
    quantity: int
    amount_minor: int  # what the buyer is charged, after any coupon
    currency: str
    expires_at: datetime
    discount_minor: int = 0


@dataclass(frozen=True, slots=True)
class Result:
    """What a transition did, for the edge to tell buyers and admins."""

    outcome: Outcome
    order_id: int | None = None
    buyer_id: int | None = None
    sku: str | None = None
    stock_left: int | None = None  # unique keys left after a fulfilment, capped
    low_stock_threshold: int | None = None
    sold: int = 0  # keys this fulfilment took

    @property
    def low_stock(self) -> bool:
        """This sale took the product to its low-stock threshold, or sold the last key.

        Only the sale that crosses the line raises the alert, not every sale below it.
        """
        if (
            self.outcome is not Outcome.FULFILLED
            or self.stock_left is None
            or self.low_stock_threshold is None
        ):
            return False
        crossed = self.stock_left <= self.low_stock_threshold < self.stock_left + self.sold
        return crossed or self.stock_left == 0


@dataclass(frozen=True, slots=True)
class RevealView:
    at: datetime
    how: str


@dataclass(frozen=True, slots=True)
class DisputeResult:
    result: Result
    reveals: tuple[RevealView, ...] = ()
    blacklisted: bool = False


# ---------------------------------------------------------------- checkout


async def checkout(
    db: Database,
    gateway: PaymentGateway,
    *,
    buyer_id: int,
    language: str,
    product_id: int,
    quantity: int,
    policy: CheckoutPolicy,
    coupon: str | None = None,
    now: datetime | None = None,
) -> CheckoutResult:
    """Create an order with its keys reserved, then open the provider's checkout for it.

    With a `coupon` code, the order holds one use of it and is charged the discounted price
    (store/coupons.py). Raises OutOfStock, OverLimit, TooManyUnpaid, Blacklisted,
    ProductInactive, NotFound, CouponRefused or PaymentUnavailable; in every case nothing
    stays reserved or held.
    """
    now = now or datetime.now(UTC)
    expires_at = now + policy.ttl
    opened = await db.write(
        _open_order,
        (gateway.name, gateway.currency),
        buyer_id,
        language,
        product_id,
        quantity,
        policy,
        now,
        expires_at,
        coupon,
    )
    request = CheckoutRequest(
        order_id=opened.order_id,
        product_name=opened.product_name,
        quantity=quantity,
        unit_amount_minor=opened.unit_amount_minor,
        currency=opened.currency,
        expires_at=expires_at,
        buyer_id=buyer_id,
        language=language,
        every=opened.every,
        discount_minor=opened.discount_minor,
    )
    try:
        started = await gateway.start_checkout(request)
    except Exception:
        # Whatever went wrong, the buyer has no link to pay: give the keys back now. (If the
        # task is cancelled instead, the orphaned order is cancelled by reconciliation.)
        await db.write(
            _close_unpaid, opened.order_id, OrderStatus.CANCELLED, None, None, datetime.now(UTC)
        )
        raise
    await db.write(_attach_checkout, opened.order_id, started.ref, started.url, started.expires_at)
    return CheckoutResult(
        order_id=opened.order_id,
        url=started.url,
        product_name=opened.product_name,
        quantity=quantity,
        amount_minor=request.amount_minor,
        currency=opened.currency,
        expires_at=expires_at,
        discount_minor=opened.discount_minor,
    )


@dataclass(frozen=True, slots=True)
class _Opened:
    order_id: int
    product_name: str
    unit_amount_minor: int
    currency: str
    every: str | None = None
    discount_minor: int = 0


async def _open_order(
    session: AsyncSession,
    pricing: tuple[str, str | None],  # the provider's name and currency
    buyer_id: int,
    language: str,
    product_id: int,
    quantity: int,
    policy: CheckoutPolicy,
    now: datetime,
    expires_at: datetime,
    code: str | None = None,
) -> _Opened:
    provider, provider_currency = pricing
    if await touch(session, buyer_id, language, now):
        raise Blacklisted("buyer is blacklisted")
    product = await session.get(Product, product_id)
    if product is None:
        raise NotFound("no such product")
    if not product.active:
        raise ProductInactive(product.sku)
    if quantity < 1:
        raise InvalidInput("quantity must be at least 1")
    if quantity > product.max_per_order:
        raise OverLimit(product.max_per_order)
    if product.every is not None and quantity != 1:
        raise InvalidInput("a subscription is bought one at a time")
    unpaid = await session.scalar(
        select(func.count()).where(Order.buyer_id == buyer_id, Order.status == OrderStatus.PENDING)
    )
    if unpaid >= policy.max_unpaid:
        raise TooManyUnpaid(policy.max_unpaid)
    if product.max_per_buyer is not None:
        held = await session.scalar(
            select(func.coalesce(func.sum(Order.quantity), 0)).where(
                Order.buyer_id == buyer_id,
                Order.product_id == product.id,
                Order.status.in_(_HOLDING),
            )
        )
        if held + quantity > product.max_per_buyer:
            raise OverLimit(max(0, product.max_per_buyer - held))
    if product.kind == ProductKind.UNIQUE:
        await _check_hold(session, product.id, buyer_id, quantity, policy)
    unit = unit_price(product.price_minor, product.prices, provider, provider_currency)
    if unit is None:
        raise PaymentUnavailable(f"{product.sku} is not sold through {provider}")
    currency = provider_currency or product.currency
    coupon, discount = None, 0
    if code is not None:
        coupon = await coupons.hold(session, code, product, now)
        discount = coupons.discount(
            coupon, total=unit * quantity, card_total=product.price_minor * quantity
        )
    order = Order(
        buyer_id=buyer_id,
        product_id=product.id,
        quantity=quantity,
        amount_minor=unit * quantity - discount,
        coupon_id=coupon.id if coupon else None,
        discount_minor=discount,
        currency=currency,
        provider=provider,
        status=OrderStatus.PENDING,
        reserved_until=expires_at,
        check_after=expires_at + CHECK_GRACE,
        created_at=now,
    )
    session.add(order)
    await session.flush()
    if product.kind == ProductKind.SHARED:
        if await allocation.newest_shared_key(session, product.id) is None:
            raise OutOfStock(0)
    else:
        got = await allocation.take_keys(
            session, product.id, order.id, quantity, status=KeyStatus.RESERVED
        )
        if got < quantity:
            raise OutOfStock(got)
    return _Opened(order.id, product.name_in(language), unit, currency, product.every, discount)


async def _check_hold(
    session: AsyncSession, product_id: int, buyer_id: int, quantity: int, policy: CheckoutPolicy
) -> None:
    """Refuse a checkout that would let one buyer's unpaid checkouts hoard a product.

    Runs under the buyer's row lock (see `touch`), so one buyer's checkouts cannot race it.
    The stock is counted only when the units allowance is exceeded, and only as far as needed.
    """
    held = await session.scalar(
        select(func.coalesce(func.sum(Order.quantity), 0)).where(
            Order.buyer_id == buyer_id,
            Order.product_id == product_id,
            Order.status == OrderStatus.PENDING,
        )
    )
    wanted = held + quantity
    if wanted <= policy.hold_max_units:
        return
    on_sale = 0
    if policy.hold_max_share > 0:
        needed = math.ceil(wanted / policy.hold_max_share - 1e-9)
        capped = (
            select(Key.id)
            .where(
                Key.product_id == product_id,
                Key.status.in_((KeyStatus.AVAILABLE, KeyStatus.RESERVED)),
            )
            .limit(needed)
            .subquery()
        )
        on_sale = await session.scalar(select(func.count()).select_from(capped))
        if on_sale >= needed:
            return
    cap = max(policy.hold_max_units, math.floor(policy.hold_max_share * on_sale + 1e-9))
    raise HoldLimit(max(0, cap - held), cap)


async def _attach_checkout(
    session: AsyncSession,
    order_id: int,
    ref: str,
    url: str | None,
    provider_expires_at: datetime | None = None,
) -> None:
    order = await session.get(Order, order_id)
    if order is not None and order.provider_ref is None:
        order.provider_ref = ref
        order.checkout_url = url
        if provider_expires_at is not None and provider_expires_at > order.reserved_until:
            # The provider keeps its checkout open past our reservation (Stripe's minimum is
            # 30 minutes): reconciliation closes it at the provider when the reservation ends.
            order.check_after = order.reserved_until


class NotPayable(StrEnum):
    """Why an order cannot take a payment now (what a payer is told before paying)."""

    UNKNOWN = "unknown"  # no such order, or not this checkout's
    NOT_YOURS = "not_yours"  # someone else's order
    CLOSED = "closed"  # paid, expired or cancelled already
    EXPIRED = "expired"  # its reservation lapsed
    SOLD_OUT = "sold_out"  # its keys are no longer held for it
    AMOUNT = "amount"  # the payment is not the order's amount


async def check_payable(
    db: Database,
    order_id: int,
    *,
    checkout_ref: str,
    payer_id: int,
    amount_minor: int,
    currency: str,
    now: datetime | None = None,
) -> NotPayable | None:
    """Whether an order may be paid now, as asked just before the money moves; None if so.

    For providers that ask the shop before charging (Telegram's pre-checkout query): the
    order must be this checkout's and this payer's, still pending within its reservation,
    still holding its keys, and the amount must be the order's.
    """

    async def work(session: AsyncSession) -> NotPayable | None:
        moment = now or datetime.now(UTC)
        order = await session.get(Order, order_id)
        if order is None or order.provider_ref != checkout_ref:
            return NotPayable.UNKNOWN
        if order.buyer_id != payer_id:
            return NotPayable.NOT_YOURS
        if order.status != OrderStatus.PENDING or order.paid_at is not None:
            return NotPayable.CLOSED
        if order.reserved_until <= moment:
            return NotPayable.EXPIRED
        if amount_minor != order.amount_minor or currency.lower() != order.currency:
            return NotPayable.AMOUNT
        if order.shared_key_id is None:
            product = await session.get(Product, order.product_id)
            if product.kind == ProductKind.SHARED:
                held = await allocation.newest_shared_key(session, product.id) is not None
            else:
                reserved = await session.scalar(
                    select(func.count()).where(
                        Key.order_id == order.id, Key.status == KeyStatus.RESERVED
                    )
                )
                held = reserved == order.quantity
            if not held:
                return NotPayable.SOLD_OUT
        return None

    return await db.read(work)


# ---------------------------------------------------------------- payment


async def fulfil(
    db: Database,
    payment: Payment,
    policy: OutOfStockPolicy,
    *,
    event: Event | None = None,
    now: datetime | None = None,
) -> Result:
    """Apply a provider's report that an order was paid: safe to call any number of times.

    In one transaction: record the event, mark the order paid, turn its reservation into a
    sale (or take fresh keys if the reservation lapsed), and queue the delivery. With nothing
    left to give, apply the out-of-stock policy. A payment that does not match the order's
    amount and currency puts the order in review instead.
    """
    return await db.write(_fulfil, payment, policy, event, now or datetime.now(UTC))


async def _fulfil(
    session: AsyncSession,
    payment: Payment,
    policy: OutOfStockPolicy,
    event: Event | None,
    now: datetime,
) -> Result:
    # The order's new state is written once, at the end, not flushed before every query.
    with session.no_autoflush:
        return await _apply_payment(session, payment, policy, event, now)


async def _apply_payment(
    session: AsyncSession,
    payment: Payment,
    policy: OutOfStockPolicy,
    event: Event | None,
    now: datetime,
) -> Result:
    order = await lock_order(session, payment.order_id)
    if order is not None and order.provider_ref is None and order.status == OrderStatus.PENDING:
        # Its checkout is being opened right now (or the opening failed and the order is about
        # to be cancelled): nothing can tell yet whether this payment is for it. Nothing is
        # written, so the provider's retry, reconciliation or the buyer's return applies it.
        raise CheckoutNotRecorded(f"order {order.id} has no checkout recorded yet")
    if event is not None and not await record_event(session, event, payment.order_id, now):
        return Result(Outcome.DUPLICATE, payment.order_id)
    if order is None:
        return Result(Outcome.UNKNOWN_ORDER, payment.order_id)
    if not own_checkout(order, payment.checkout_ref):
        # Never fulfil on the order id alone: the session must be the one we opened.
        return Result(Outcome.FOREIGN, order.id)
    product = await _product_for_payment(session, order.product_id)
    base = {"order_id": order.id, "buyer_id": order.buyer_id, "sku": product.sku}
    if order.paid_at is not None:
        return Result(Outcome.UNCHANGED, **base)
    coupon_within_limit = await coupons.count_use(session, order)
    order.paid_at = now
    order.paid_amount_minor = payment.amount_minor
    order.paid_currency = payment.currency
    order.payment_ref = payment.payment_ref
    order.provider_ref = order.provider_ref or payment.checkout_ref
    if (
        payment.amount_minor != order.amount_minor
        or (payment.currency or "").lower() != order.currency
        or over_review_threshold(order, product)
        or not coupon_within_limit
    ):
        # Keys stay reserved for the admin's decision (store/review.py): nothing but that
        # decision moves an order out of review, so the reservation cannot lapse meanwhile.
        order.status = OrderStatus.REVIEW
        session.add(allocation.delivery(order, DeliveryKind.REVIEW, now))
        return Result(Outcome.REVIEW, **base)
    if await allocation.fill_order(session, order, product):
        order.status = OrderStatus.FULFILLED
        order.fulfilled_at = now
        order.closed_at = now
        session.add(allocation.delivery(order, DeliveryKind.KEYS, now))
        return Result(
            Outcome.FULFILLED,
            **base,
            stock_left=await allocation.stock_left(session, product),
            low_stock_threshold=product.low_stock_threshold,
            sold=order.quantity,
        )
    if policy.backorder:
        order.status = OrderStatus.BACKORDERED
        session.add(allocation.delivery(order, DeliveryKind.BACKORDERED, now))
        return Result(Outcome.BACKORDERED, **base)
    order.status = OrderStatus.REFUND_PENDING
    return Result(Outcome.REFUND_DUE, **base)


def over_review_threshold(order: Order, product: Product) -> bool:
    """Whether an order is at or above its product's review quantity or amount."""
    if product.review_quantity is not None and order.quantity >= product.review_quantity:
        return True
    if product.review_amount_minor is None:
        return False
    # The threshold is in the product's currency; an order priced in another (Stars) is
    # weighed at the product's price.
    if order.currency == product.currency:
        worth = order.amount_minor
    else:
        worth = product.price_minor * order.quantity
    return worth >= product.review_amount_minor


async def _product_for_payment(session: AsyncSession, product_id: int) -> Product:
    """The order's product, share-locked on PostgreSQL.

    A restock (which locks the product for update) then either commits before this payment
    looks for keys, or waits for it and finds this order backordered. SQLite runs one write
    transaction at a time, so there the product can come from the session's identity map.
    """
    if session.bind.dialect.name == "sqlite":
        return await session.get(Product, product_id)
    return await session.scalar(
        select(Product).where(Product.id == product_id).with_for_update(read=True)
    )


async def pay_period(
    db: Database,
    payment: Payment,
    policy: OutOfStockPolicy,
    *,
    event: Event,
    now: datetime | None = None,
) -> Result:
    """Apply a payment that may be one period of a subscription: exactly once per payment.

    `payment.order_id` is the order the buyer subscribed through. Unpaid, it is the first
    period: fulfilled like any order, and the subscription starts. Paid by another payment,
    this is a renewal: a new order of one key is made for it, paid, and filled from stock
    (or the out-of-stock policy applies), and the subscription runs to `payment.period_end`.
    For a product that is not a subscription, a second payment changes nothing (UNCHANGED).
    """
    return await db.write(_pay_period, payment, policy, event, now or datetime.now(UTC))


async def _pay_period(
    session: AsyncSession,
    payment: Payment,
    policy: OutOfStockPolicy,
    event: Event | None,
    now: datetime,
) -> Result:
    first = await lock_order(session, payment.order_id)
    if first is not None and first.provider_ref is None and first.status == OrderStatus.PENDING:
        raise CheckoutNotRecorded(f"order {first.id} has no checkout recorded yet")
    if event is not None and not await record_event(session, event, payment.order_id, now):
        return Result(Outcome.DUPLICATE, payment.order_id)
    with session.no_autoflush:
        if first is None:
            return Result(Outcome.UNKNOWN_ORDER, payment.order_id)
        started = await session.scalar(
            select(Subscription).where(Subscription.first_order_id == first.id)
        )
        if not own_checkout(first, payment.checkout_ref):
            # A provider that bills the subscription itself (Stripe's invoices) names it, not
            # the checkout: it must be the one this order's checkout started.
            if payment.subscription_ref is None:
                return Result(Outcome.FOREIGN, first.id)
            if started is None and first.status == OrderStatus.PENDING:
                raise SubscriptionNotStarted(f"order {first.id}'s subscription is not started")
            if started is None or started.payment_ref != payment.subscription_ref:
                return Result(Outcome.FOREIGN, first.id)
        product = await _product_for_payment(session, first.product_id)
        if first.paid_at is None:
            result = await _apply_payment(session, payment, policy, None, now)
            if product.every is not None and result.outcome is not Outcome.REVIEW:
                await _start_subscription(session, first, payment, now)
            return result
        if product.every is None or first.payment_ref == payment.payment_ref:
            if started is not None and payment.period_end is not None:
                # The first period's own invoice, after its checkout: it says when it ends.
                started.current_period_end = max(
                    payment.period_end, started.current_period_end or payment.period_end
                )
            return Result(Outcome.UNCHANGED, first.id, first.buyer_id, product.sku)
        subscription = await _start_subscription(session, first, payment, now)
        renewed = await session.scalar(
            select(Order.id).where(
                Order.subscription_id == subscription.id,
                Order.payment_ref == payment.payment_ref,
            )
        )
        if renewed is not None:
            # The same period's payment again, under another event id: one key per payment.
            return Result(Outcome.DUPLICATE, renewed, first.buyer_id, product.sku)
        if payment.period_end is not None:
            subscription.current_period_end = max(
                payment.period_end, subscription.current_period_end or payment.period_end
            )
        if subscription.status != SubscriptionStatus.ENDED:
            subscription.status = SubscriptionStatus.ACTIVE
        renewal = Order(
            buyer_id=first.buyer_id,
            product_id=product.id,
            quantity=1,
            amount_minor=payment.amount_minor or 0,
            currency=(payment.currency or first.currency).lower(),
            provider=first.provider,
            payment_ref=payment.payment_ref,
            status=OrderStatus.PENDING,
            reserved_until=now,
            check_after=now,
            created_at=now,
            paid_at=now,
            paid_amount_minor=payment.amount_minor,
            paid_currency=payment.currency,
            subscription_id=subscription.id,
        )
        session.add(renewal)
        await session.flush()
        base = {"order_id": renewal.id, "buyer_id": renewal.buyer_id, "sku": product.sku}
        if await allocation.fill_order(session, renewal, product):
            renewal.status = OrderStatus.FULFILLED
            renewal.fulfilled_at = renewal.closed_at = now
            session.add(allocation.delivery(renewal, DeliveryKind.KEYS, now))
            return Result(
                Outcome.FULFILLED,
                **base,
                stock_left=await allocation.stock_left(session, product),
                low_stock_threshold=product.low_stock_threshold,
                sold=1,
            )
        if policy.backorder:
            renewal.status = OrderStatus.BACKORDERED
            session.add(allocation.delivery(renewal, DeliveryKind.BACKORDERED, now))
            return Result(Outcome.BACKORDERED, **base)
        renewal.status = OrderStatus.REFUND_PENDING
        return Result(Outcome.REFUND_DUE, **base)


async def _start_subscription(
    session: AsyncSession, first: Order, payment: Payment, now: datetime
) -> Subscription:
    """The subscription begun by its first order; made now if it is not there yet."""
    insert = dialect_insert(session)
    await session.execute(
        insert(Subscription)
        .values(
            buyer_id=first.buyer_id,
            product_id=first.product_id,
            provider=first.provider,
            first_order_id=first.id,
            payment_ref=payment.subscription_ref or first.payment_ref or payment.payment_ref,
            status=SubscriptionStatus.ACTIVE,
            current_period_end=payment.period_end,
            cancel_at_period_end=False,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=[Subscription.first_order_id])
    )
    return await session.scalar(
        select(Subscription)
        .where(Subscription.first_order_id == first.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


async def fulfil_backorders(session: AsyncSession, product_id: int, now: datetime) -> list[int]:
    """Fulfil a product's backordered orders from fresh stock, oldest payment first.

    Runs inside the restock transaction; stops at the first order it cannot fill so a
    later, smaller order never jumps the queue.
    """
    product = await session.get(Product, product_id)
    waiting = (
        await session.scalars(
            select(Order)
            .where(Order.product_id == product_id, Order.status == OrderStatus.BACKORDERED)
            .order_by(Order.paid_at, Order.id)
            .with_for_update()
        )
    ).all()
    fulfilled = []
    for order in waiting:
        if not await allocation.fill_order(session, order, product):
            break
        order.status = OrderStatus.FULFILLED
        order.fulfilled_at = now
        order.closed_at = now
        session.add(allocation.delivery(order, DeliveryKind.KEYS, now))
        fulfilled.append(order.id)
    return fulfilled


async def awaiting_payment(
    db: Database,
    order_id: int,
    *,
    checkout_ref: str | None = None,
    event: Event | None = None,
    recheck_after: timedelta,
    now: datetime | None = None,
) -> Result:
    """A delayed payment method was chosen: keep the reservation until it settles."""

    async def work(session: AsyncSession) -> Result:
        moment = now or datetime.now(UTC)
        if event is not None and not await record_event(session, event, order_id, moment):
            return Result(Outcome.DUPLICATE, order_id)
        order = await lock_order(session, order_id)
        if order is None:
            return Result(Outcome.UNKNOWN_ORDER, order_id)
        if not own_checkout(order, checkout_ref):
            return Result(Outcome.FOREIGN, order.id)
        if order.status == OrderStatus.PENDING:
            order.check_after = moment + recheck_after
            return Result(Outcome.AWAITING, order.id, order.buyer_id)
        return Result(Outcome.UNCHANGED, order.id, order.buyer_id)

    return await db.write(work)


async def close_unpaid(
    db: Database,
    order_id: int,
    state: CheckoutState,
    *,
    checkout_ref: str | None = None,
    event: Event | None = None,
    now: datetime | None = None,
) -> Result:
    """The checkout closed without payment (expired, or a delayed payment failed)."""
    status = OrderStatus.EXPIRED if state == CheckoutState.EXPIRED else OrderStatus.CANCELLED
    return await db.write(
        _close_unpaid, order_id, status, checkout_ref, event, now or datetime.now(UTC)
    )


async def _close_unpaid(
    session: AsyncSession,
    order_id: int,
    status: OrderStatus,
    checkout_ref: str | None,
    event: Event | None,
    now: datetime,
) -> Result:
    if event is not None and not await record_event(session, event, order_id, now):
        return Result(Outcome.DUPLICATE, order_id)
    order = await lock_order(session, order_id)
    if order is None:
        return Result(Outcome.UNKNOWN_ORDER, order_id)
    if (event is not None or checkout_ref is not None) and not own_checkout(order, checkout_ref):
        # Only the shop itself closes an order without naming its checkout.
        return Result(Outcome.FOREIGN, order.id)
    # A late "expired" after the payment must not undo the sale.
    if order.status != OrderStatus.PENDING or order.paid_at is not None:
        return Result(Outcome.UNCHANGED, order.id, order.buyer_id)
    await coupons.release(session, order)
    await allocation.release(session, order.id)
    order.status = status
    order.closed_at = now
    return Result(Outcome.RELEASED, order.id, order.buyer_id)


# ---------------------------------------------------------------- refunds and disputes


async def record_refund(
    db: Database,
    order_id: int | None,
    *,
    payment_ref: str | None = None,
    full: bool = True,
    event: Event | None = None,
    admin_id: int | None = None,
    paid: Payment | None = None,
    now: datetime | None = None,
) -> Result:
    """Money went back to the buyer: the order is refunded and its keys revoked for good.

    Called after keyvend's own refund (by order id) and for `charge.refunded` events
    (refunds made in the Stripe dashboard), which apply only to the order whose recorded
    payment is `payment_ref`; `order_id` is then just the order the event names. A partial
    refund changes nothing but is reported. See `_order_of_payment` for UNVERIFIED and `paid`.
    """

    async def work(session: AsyncSession) -> Result:
        moment = now or datetime.now(UTC)
        order, outcome = await _order_of_payment(session, order_id, payment_ref, event, paid)
        if outcome is Outcome.UNKNOWN_ORDER:
            return Result(outcome, order_id)
        if outcome is Outcome.UNVERIFIED:
            return Result(outcome, order.id, order.buyer_id)
        if event is not None and not await record_event(session, event, order.id, moment):
            return Result(Outcome.DUPLICATE, order.id)
        if outcome is not None:
            return Result(outcome, order.id)
        if not full:
            return Result(Outcome.PARTIAL_REFUND, order.id, order.buyer_id)
        if order.status == OrderStatus.REFUNDED:
            return Result(Outcome.UNCHANGED, order.id, order.buyer_id)
        if order.paid_at is None:
            # Refunded before its payment was applied (events come in any order), as the
            # provider confirmed: record the payment as settled, so the late payment event
            # finds nothing left to fulfil.
            await coupons.count_use(session, order)
            _record_paid(order, paid, moment)
        await allocation.revoke(session, order.id)
        await allocation.release(session, order.id)  # an order in review still holds a reservation
        order.status = OrderStatus.REFUNDED
        order.closed_at = moment
        session.add(allocation.delivery(order, DeliveryKind.REFUNDED, moment))
        if admin_id is not None:
            session.add(audit(admin_id, "order.refund", str(order.id)))
        return Result(Outcome.REFUNDED, order.id, order.buyer_id)

    return await db.write(work)


async def record_dispute(
    db: Database,
    order_id: int | None,
    *,
    payment_ref: str | None,
    blacklist: bool,
    event: Event | None = None,
    paid: Payment | None = None,
    now: datetime | None = None,
) -> DisputeResult:
    """The buyer disputed the charge: flag the order and gather the reveal log as evidence.

    Applies only to the order whose recorded payment is `payment_ref`. A dispute that arrives
    before its payment was applied (UNVERIFIED, then called again with the provider's `paid`
    report) records the payment and flags the order without giving its keys; a disputed
    order's keys are not shown again. See `_order_of_payment`.
    """

    async def work(session: AsyncSession) -> DisputeResult:
        moment = now or datetime.now(UTC)
        order, outcome = await _order_of_payment(session, order_id, payment_ref, event, paid)
        if outcome is Outcome.UNKNOWN_ORDER:
            # Not in the ledger: the caller may find the order at the provider and come back.
            return DisputeResult(Result(outcome, order_id))
        if outcome is Outcome.UNVERIFIED:
            return DisputeResult(Result(outcome, order.id, order.buyer_id))
        if event is not None and not await record_event(session, event, order.id, moment):
            return DisputeResult(Result(Outcome.DUPLICATE, order.id))
        if outcome is not None:
            return DisputeResult(Result(outcome, order.id))
        reveals = await session.execute(
            select(Reveal.revealed_at, Reveal.how)
            .where(Reveal.order_id == order.id)
            .order_by(Reveal.id)
        )
        log = tuple(RevealView(at, how) for at, how in reveals)
        if order.status == OrderStatus.DISPUTED:
            return DisputeResult(Result(Outcome.UNCHANGED, order.id, order.buyer_id), log)
        if order.paid_at is None:
            # Disputed before its payment was applied: the money is contested, so the keys
            # are never given (the reservation goes back on sale); the admins decide.
            await coupons.count_use(session, order)
            _record_paid(order, paid, moment)
            await allocation.release(session, order.id)
            order.status = OrderStatus.DISPUTED
            order.closed_at = moment
        elif order.status == OrderStatus.FULFILLED:
            # Only a sale becomes "disputed": a refunded, backordered or reviewed order keeps its
            # state (and its keys theirs); the admins still get the alert and the evidence.
            order.status = OrderStatus.DISPUTED
        # A re-show queued before the dispute is not sent (see buyer_views.show_keys_again).
        await session.execute(
            delete(Delivery).where(
                Delivery.order_id == order.id,
                Delivery.kind == DeliveryKind.RESHOW,
                Delivery.status == DeliveryStatus.QUEUED,
                Delivery.lease_owner.is_(None),
            )
        )
        if blacklist:
            buyer = await session.get(Buyer, order.buyer_id)
            buyer.blacklisted = True
        return DisputeResult(Result(Outcome.DISPUTED, order.id, order.buyer_id), log, blacklist)

    return await db.write(work)


async def _order_of_payment(
    session: AsyncSession,
    order_id: int | None,
    payment_ref: str | None,
    event: Event | None,
    paid: Payment | None,
) -> tuple[Order | None, Outcome | None]:
    """The order a refund or dispute is about, locked; or the outcome that ends it early.

    Without `payment_ref` and `event`, this is the shop's own call and `order_id` is trusted.
    Otherwise the order is the one whose recorded payment is `payment_ref`. An order the
    event names whose payment is not recorded yet is UNVERIFIED: the caller asks the
    provider about the order's own checkout and calls again with that report as `paid`,
    which must be paid, by `payment_ref`, through the checkout recorded for the order.
    Anything else naming our order is FOREIGN (another integration's), unknown otherwise.
    """
    if payment_ref is None and event is None:
        order = await lock_order(session, order_id)
        return order, None if order is not None else Outcome.UNKNOWN_ORDER
    if payment_ref is not None:
        order = await session.scalar(
            select(Order)
            .where(Order.payment_ref == payment_ref)
            .order_by(Order.id)
            .limit(1)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if order is not None:
            return order, None
    if paid is not None:
        order_id = paid.order_id
    order = await lock_order(session, order_id)
    if order is None:
        return None, Outcome.UNKNOWN_ORDER
    if payment_ref is None or order.payment_ref is not None or order.provider_ref is None:
        return order, Outcome.FOREIGN
    if paid is None:
        return order, Outcome.UNVERIFIED
    if (
        paid.state == CheckoutState.PAID
        and paid.payment_ref == payment_ref
        and own_checkout(order, paid.checkout_ref)
    ):
        return order, None
    return order, Outcome.FOREIGN


def _record_paid(order: Order, paid: Payment | None, now: datetime) -> None:
    """Mark an order paid without fulfilling it (a refund or dispute came first)."""
    order.paid_at = now
    if paid is not None:
        order.payment_ref = paid.payment_ref
        order.paid_amount_minor = paid.amount_minor
        order.paid_currency = paid.currency


# ---------------------------------------------------------------- asking the provider


async def confirm(
    db: Database,
    gateways: Mapping[str, PaymentGateway],
    order_id: int,
    policy: OutOfStockPolicy,
    *,
    close_if_open: bool = False,
    now: datetime | None = None,
) -> Result:
    """Ask the provider what became of an order's checkout and apply the answer.

    The one way to settle an order without a webhook: reconciliation, an admin's /confirm
    and the buyer's return from the payment page all use it. There is no path that marks an
    order paid without the provider saying so. With `close_if_open`, a checkout still open
    past its time is closed at the provider first, so the answer is final.
    """
    pending = await db.read(pending_by_id, order_id)
    if pending is None:
        raise NotFound(f"no order {order_id}")
    if pending.status != OrderStatus.PENDING:
        raise OrderNotPayable(f"order {order_id} is {pending.status}")
    if pending.checkout_ref is None:
        raise OrderNotPayable(f"order {order_id} has no checkout")
    gateway = gateway_for(gateways, pending)
    if close_if_open:
        payment = await gateway.cancel_checkout(order_id, pending.checkout_ref)
    else:
        payment = await gateway.checkout_status(order_id, pending.checkout_ref)
    if payment.state == CheckoutState.PAID:
        # As a payment event would: a subscription's first period starts it.
        return await db.write(_pay_period, payment, policy, None, now or datetime.now(UTC))
    if payment.state in (CheckoutState.EXPIRED, CheckoutState.FAILED):
        return await close_unpaid(
            db, order_id, payment.state, checkout_ref=payment.checkout_ref, now=now
        )
    if payment.state == CheckoutState.AWAITING:
        return Result(Outcome.AWAITING, order_id)
    return Result(Outcome.UNCHANGED, order_id)
