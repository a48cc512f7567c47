"""The state machine's exception paths, at store level, on SQLite and on PostgreSQL.

With the in-memory `FakeGateway` as the provider: a payment that differs from the order goes
to review with its keys still reserved; paid orders with nothing to give are backordered and
filled at restock by payment time (a bigger, older order is never skipped for a smaller,
newer one) or owed a refund (`refund_pending` until the refund is recorded); a late
`expired` never undoes a sale; a payment after the reservation lapsed takes fresh keys when
there are some; refunds release or revoke keys as the order's state requires; disputes flag
the order and can blacklist the buyer. After each story the invariant checks pass.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session
from sqlalchemy.util import await_only

from store import buyer_views, inventory, orders, reconciliation
from store.check import check
from store.crypto import KeyVault
from store.db import Database
from store.errors import (
    Blacklisted,
    CheckoutNotRecorded,
    HoldLimit,
    OrderNotPayable,
    OutOfStock,
    PaymentUnavailable,
)
from store.models import Buyer, Delivery, DeliveryKind, Key, KeyStatus, Order, OrderStatus
from store.orders import Outcome
from store.payments import CheckoutState, Event
from tests.store.conftest import (
    BACKORDER,
    REFUND,
    FakeGateway,
    invariants_hold,
    open_order,
    scalar,
    stocked,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)


async def _all(db: Database, query) -> list:
    async def work(session):
        return list((await session.scalars(query)).all())

    return await db.read(work)


async def status_of(db: Database, order_id: int) -> str:
    return await scalar(db, select(Order.status).where(Order.id == order_id))


async def keys_of(db: Database, order_id: int) -> list[tuple[int, str]]:
    async def work(session):
        return list(
            (
                await session.execute(
                    select(Key.id, Key.status).where(Key.order_id == order_id).order_by(Key.id)
                )
            ).all()
        )

    return await db.read(work)


async def deliveries_of(db: Database, order_id: int) -> list[str]:
    return await _all(
        db, select(Delivery.kind).where(Delivery.order_id == order_id).order_by(Delivery.id)
    )


async def lapse(db: Database, order_id: int) -> None:
    """The checkout expired unpaid: its keys go back on sale."""
    result = await orders.close_unpaid(db, order_id, CheckoutState.EXPIRED)
    assert result.outcome is Outcome.RELEASED


async def restock(db: Database, vault: KeyVault, sku: str, *keys: str) -> inventory.RestockReport:
    return await inventory.restock(
        db, vault, sku, inventory.parse_keys("\n".join(keys)), source="test"
    )


# ---------------------------------------------------------------- review


@pytest.mark.parametrize(
    ("amount", "currency"), [(1, None), (None, "eur")], ids=["amount", "currency"]
)
async def test_a_payment_that_differs_from_the_order_goes_to_review(
    db: Database, vault: KeyVault, gateway: FakeGateway, amount: int | None, currency: str | None
) -> None:
    product = await stocked(db, vault, keys=3)
    order = await open_order(db, gateway, product.id, 7, quantity=2)

    result = await orders.fulfil(
        db, gateway.payment(order, amount=amount, currency=currency), REFUND
    )

    assert result.outcome is Outcome.REVIEW
    assert await status_of(db, order) == OrderStatus.REVIEW
    assert [s for _, s in await keys_of(db, order)] == [
        KeyStatus.RESERVED
    ] * 2  # held for the admin
    assert await deliveries_of(db, order) == [
        DeliveryKind.REVIEW
    ]  # the buyer is told, no keys sent
    await invariants_hold(db)


async def test_a_full_refund_of_an_order_in_review_puts_its_keys_back_on_sale(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=3)
    order = await open_order(db, gateway, product.id, 7, quantity=2)
    await orders.fulfil(db, gateway.payment(order, amount=1), REFUND)

    result = await orders.record_refund(db, None, payment_ref=f"pay_{order}")

    assert result.outcome is Outcome.REFUNDED
    assert await status_of(db, order) == OrderStatus.REFUNDED
    assert await keys_of(db, order) == []  # released, not revoked: they were never the buyer's
    assert await scalar(db, select(func.count()).where(Key.status == KeyStatus.AVAILABLE)) == 3
    assert await deliveries_of(db, order) == [DeliveryKind.REVIEW, DeliveryKind.REFUNDED]
    await invariants_hold(db)


# ---------------------------------------------------------------- paid with nothing to give


async def _sold_out_then_paid(
    db: Database, vault: KeyVault, gateway: FakeGateway, policy: orders.OutOfStockPolicy
) -> tuple[int, int]:
    """Two orders whose reservations lapsed, paid after another buyer took all the stock.

    The smaller order (1 key) is opened first, so it has the lower id, and paid last; the
    bigger one (2 keys) is paid first. Returns (bigger, smaller).
    """
    product = await stocked(db, vault, keys=3)
    smaller = await open_order(db, gateway, product.id, 1, quantity=1)
    bigger = await open_order(db, gateway, product.id, 2, quantity=2)
    await lapse(db, smaller)
    await lapse(db, bigger)
    everything = await open_order(db, gateway, product.id, 3, quantity=3)
    assert (
        await orders.fulfil(db, gateway.payment(everything), policy)
    ).outcome is Outcome.FULFILLED
    first = await orders.fulfil(db, gateway.payment(bigger), policy, now=T0)
    second = await orders.fulfil(
        db, gateway.payment(smaller), policy, now=T0 + timedelta(seconds=1)
    )
    assert first.outcome == second.outcome
    return bigger, smaller


async def test_backorders_fill_by_payment_time_and_never_jump_the_queue(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    bigger, smaller = await _sold_out_then_paid(db, vault, gateway, BACKORDER)
    for order in (bigger, smaller):
        assert await status_of(db, order) == OrderStatus.BACKORDERED
        assert await deliveries_of(db, order) == [DeliveryKind.BACKORDERED]
    await invariants_hold(db)

    # One key would fill the smaller order, but the bigger one was paid first.
    report = await restock(db, vault, "GAME", "NEW-1")
    assert report.backorders_fulfilled == ()
    assert await status_of(db, smaller) == OrderStatus.BACKORDERED

    report = await restock(db, vault, "GAME", "NEW-2")
    assert report.backorders_fulfilled == (bigger,)
    assert await status_of(db, bigger) == OrderStatus.FULFILLED
    assert [s for _, s in await keys_of(db, bigger)] == [KeyStatus.SOLD] * 2
    assert await status_of(db, smaller) == OrderStatus.BACKORDERED

    report = await restock(db, vault, "GAME", "NEW-3", "NEW-4")
    assert report.backorders_fulfilled == (smaller,)
    assert report.available == 1
    for order in (bigger, smaller):
        assert await deliveries_of(db, order) == [DeliveryKind.BACKORDERED, DeliveryKind.KEYS]
    await invariants_hold(db)


async def test_refund_policy_owes_the_money_until_the_refund_is_recorded(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    bigger, smaller = await _sold_out_then_paid(db, vault, gateway, REFUND)
    for order in (bigger, smaller):
        assert await status_of(db, order) == OrderStatus.REFUND_PENDING
        assert await keys_of(db, order) == []
    owed = await reconciliation.refunds_due(db)
    assert [(o.order_id, o.payment_ref, o.paid_amount_minor) for o in owed] == [
        (smaller, f"pay_{smaller}", 999),
        (bigger, f"pay_{bigger}", 1998),
    ]
    await invariants_hold(db)  # owed, and not yet for long: not stuck

    for pending in owed:
        await gateway.refund(pending.order_id, pending.payment_ref, pending.paid_amount_minor)
        assert (await orders.record_refund(db, pending.order_id)).outcome is Outcome.REFUNDED
        assert (await orders.record_refund(db, pending.order_id)).outcome is Outcome.UNCHANGED
    assert await reconciliation.refunds_due(db) == []
    for order in (bigger, smaller):
        assert await status_of(db, order) == OrderStatus.REFUNDED
        assert await deliveries_of(db, order) == [DeliveryKind.REFUNDED]
    await invariants_hold(db)


async def test_a_refund_owed_for_over_an_hour_is_reported_stuck(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    bigger, _ = await _sold_out_then_paid(db, vault, gateway, REFUND)
    findings = await check(db, max_attempts=12, now=T0 + timedelta(hours=2))
    stuck = [v for f in findings for v in f.violations]
    assert f"order #{bigger} is stuck" in stuck


# ---------------------------------------------------------------- expiry and payment crossing


async def test_a_late_expired_event_never_undoes_a_sale(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=2)
    order = await open_order(db, gateway, product.id, 7)
    await orders.fulfil(
        db, gateway.payment(order), REFUND, event=Event("fake", "evt_paid", "completed")
    )

    late = await orders.close_unpaid(
        db,
        order,
        CheckoutState.EXPIRED,
        checkout_ref=f"fake_{order}",
        event=Event("fake", "evt_exp", "expired"),
    )
    failed = await orders.close_unpaid(db, order, CheckoutState.FAILED)

    assert late.outcome is failed.outcome is Outcome.UNCHANGED
    assert await status_of(db, order) == OrderStatus.FULFILLED
    assert [s for _, s in await keys_of(db, order)] == [KeyStatus.SOLD]
    await invariants_hold(db)


async def test_a_payment_after_the_reservation_lapsed_takes_fresh_keys(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=3)
    late = await open_order(db, gateway, product.id, 1)
    [(first_key, _)] = await keys_of(db, late)
    await lapse(db, late)
    # Someone else now holds the key the late order had reserved.
    other = await open_order(db, gateway, product.id, 2)
    assert [k for k, _ in await keys_of(db, other)] == [first_key]

    result = await orders.fulfil(db, gateway.payment(late), REFUND)

    assert result.outcome is Outcome.FULFILLED
    assert await status_of(db, late) == OrderStatus.FULFILLED
    [(fresh, status)] = await keys_of(db, late)
    assert fresh != first_key and status == KeyStatus.SOLD
    assert await keys_of(db, other) == [(first_key, KeyStatus.RESERVED)]
    await invariants_hold(db)


# ---------------------------------------------------------------- refunds and disputes of sales


async def test_a_full_refund_revokes_keys_and_a_partial_one_changes_nothing(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=3)
    order = await open_order(db, gateway, product.id, 7, quantity=2)
    await orders.fulfil(db, gateway.payment(order), REFUND)

    paid_by = f"pay_{order}"
    partial = await orders.record_refund(
        db,
        order,
        payment_ref=paid_by,
        full=False,
        event=Event("fake", "evt_part", "charge.refunded"),
    )
    assert partial.outcome is Outcome.PARTIAL_REFUND
    assert await status_of(db, order) == OrderStatus.FULFILLED

    full = Event("fake", "evt_full", "charge.refunded")
    again = [
        (await orders.record_refund(db, order, payment_ref=paid_by, event=full)).outcome
        for _ in range(2)
    ]
    assert again == [Outcome.REFUNDED, Outcome.DUPLICATE]
    assert [s for _, s in await keys_of(db, order)] == [KeyStatus.REVOKED] * 2
    # Revoked keys are never sold again: only the one never sold is left.
    assert await scalar(db, select(func.count()).where(Key.status == KeyStatus.AVAILABLE)) == 1
    with pytest.raises(OutOfStock):
        await open_order(db, gateway, product.id, 8, quantity=2)
    await invariants_hold(db)


@pytest.mark.parametrize("blacklist", [True, False], ids=["blacklist", "no-blacklist"])
async def test_a_dispute_flags_the_order_and_may_blacklist_the_buyer(
    db: Database, vault: KeyVault, gateway: FakeGateway, blacklist: bool
) -> None:
    product = await stocked(db, vault, keys=3)
    order = await open_order(db, gateway, product.id, 7)
    await orders.fulfil(db, gateway.payment(order), REFUND)

    event = Event("fake", "evt_dispute", "charge.dispute.created")
    first = await orders.record_dispute(
        db, None, payment_ref=f"pay_{order}", blacklist=blacklist, event=event
    )
    copy = await orders.record_dispute(
        db, None, payment_ref=f"pay_{order}", blacklist=blacklist, event=event
    )
    other_copy = await orders.record_dispute(
        db, None, payment_ref=f"pay_{order}", blacklist=blacklist
    )

    assert (first.result.outcome, first.blacklisted) == (Outcome.DISPUTED, blacklist)
    assert copy.result.outcome is Outcome.DUPLICATE
    assert other_copy.result.outcome is Outcome.UNCHANGED
    assert await status_of(db, order) == OrderStatus.DISPUTED
    assert await scalar(db, select(Buyer.blacklisted).where(Buyer.id == 7)) is blacklist
    if blacklist:
        with pytest.raises(Blacklisted):
            await open_order(db, gateway, product.id, 7)
    else:
        await open_order(db, gateway, product.id, 7)
    await invariants_hold(db)


async def test_a_dispute_after_a_refund_leaves_the_order_refunded(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=2)
    order = await open_order(db, gateway, product.id, 7)
    await orders.fulfil(db, gateway.payment(order), REFUND)
    await orders.record_refund(db, order)

    await orders.record_dispute(db, None, payment_ref=f"pay_{order}", blacklist=False)

    assert await status_of(db, order) == OrderStatus.REFUNDED
    await invariants_hold(db)


# ---------------------------------------------------------------- a payment racing a restock


@pytest.mark.parametrize(
    "database_url", ["postgresql"], indirect=True
)  # SQLite serialises writers: no race
async def test_a_payment_racing_a_restock_is_not_left_waiting_beside_fresh_stock(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=1)
    late = await open_order(db, gateway, product.id, 1)
    await lapse(db, late)
    taker = await open_order(db, gateway, product.id, 2)
    await orders.fulfil(db, gateway.payment(taker), BACKORDER)

    # Hold the payment's transaction just before it commits, let a restock run meanwhile.
    paused, resume = asyncio.Event(), asyncio.Event()
    armed = [True]

    def hold(session: Session) -> None:
        if armed[0]:
            armed[0] = False
            paused.set()
            await_only(resume.wait())  # inside SQLAlchemy's greenlet: waits on the loop

    event.listen(Session, "before_commit", hold)
    try:
        payment = asyncio.create_task(orders.fulfil(db, gateway.payment(late), BACKORDER))
        await asyncio.wait_for(paused.wait(), 10)
        restocking = asyncio.create_task(restock(db, vault, "GAME", "FRESH-1"))
        # Today the restock finishes at once; one that waits for the payment (a fix) gets 2 s.
        await asyncio.wait({restocking}, timeout=2)
        resume.set()
        await payment
        await restocking
    finally:
        event.remove(Session, "before_commit", hold)

    # Paid, and a key came in: the order must have it, not wait beside it for the next restock.
    assert await status_of(db, late) == OrderStatus.FULFILLED
    assert await scalar(db, select(func.count()).where(Key.status == KeyStatus.AVAILABLE)) == 0


# ---------------------------------------------------------------- events of another integration


async def test_a_refund_or_dispute_of_another_payment_never_touches_our_order(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=3)
    sold = await open_order(db, gateway, product.id, 7)
    await orders.fulfil(db, gateway.payment(sold), REFUND)
    waiting = await open_order(db, gateway, product.id, 8)  # not paid yet

    results = [
        await orders.record_refund(
            db, order, payment_ref="pay_other", event=Event("fake", f"evt_r{order}", "refund")
        )
        for order in (sold, waiting)
    ] + [
        (
            await orders.record_dispute(
                db,
                order,
                payment_ref="pay_other",
                blacklist=True,
                event=Event("fake", f"evt_d{order}", "dispute"),
                paid=gateway.payment(waiting) if order == waiting else None,
            )
        ).result
        for order in (sold, waiting)
    ]

    # The sold order's payment is recorded and is another; the open order's own checkout was
    # paid with another payment than the one disputed.
    assert [r.outcome for r in results] == [
        Outcome.FOREIGN,
        Outcome.UNVERIFIED,
        Outcome.FOREIGN,
        Outcome.FOREIGN,
    ]
    assert await status_of(db, sold) == OrderStatus.FULFILLED
    assert await status_of(db, waiting) == OrderStatus.PENDING
    assert await scalar(db, select(Buyer.blacklisted).where(Buyer.id == 7)) is False
    await invariants_hold(db)


async def test_a_refund_confirmed_by_the_orders_own_checkout_applies_before_its_payment(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=2)
    order = await open_order(db, gateway, product.id, 7)
    paid = gateway.payment(order)  # what the provider says about the order's own checkout
    event = Event("fake", "evt_refund", "charge.refunded")

    first = await orders.record_refund(db, order, payment_ref=paid.payment_ref, event=event)
    applied = await orders.record_refund(
        db, order, payment_ref=paid.payment_ref, event=event, paid=paid
    )
    late = await orders.fulfil(db, paid, REFUND)

    assert (first.outcome, applied.outcome, late.outcome) == (
        Outcome.UNVERIFIED,
        Outcome.REFUNDED,
        Outcome.UNCHANGED,
    )
    assert await keys_of(db, order) == []
    assert await deliveries_of(db, order) == [DeliveryKind.REFUNDED]
    await invariants_hold(db)


async def test_a_dispute_before_its_payment_gives_no_keys_and_hides_them_for_good(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=2)
    order = await open_order(db, gateway, product.id, 7)
    paid = gateway.payment(order)

    disputed = await orders.record_dispute(
        db, order, payment_ref=paid.payment_ref, blacklist=False, paid=paid
    )
    late = await orders.fulfil(db, paid, REFUND)

    assert (disputed.result.outcome, late.outcome) == (Outcome.DISPUTED, Outcome.UNCHANGED)
    assert await status_of(db, order) == OrderStatus.DISPUTED
    assert await keys_of(db, order) == []  # back on sale
    assert await deliveries_of(db, order) == []
    with pytest.raises(OrderNotPayable):
        await buyer_views.show_keys_again(db, order, 7)
    await invariants_hold(db)


async def test_a_disputed_sale_does_not_show_its_keys_again(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=2)
    order = await open_order(db, gateway, product.id, 7)
    await orders.fulfil(db, gateway.payment(order), REFUND)
    await buyer_views.show_keys_again(db, order, 7)  # queued before the dispute

    await orders.record_dispute(db, None, payment_ref=f"pay_{order}", blacklist=False)

    with pytest.raises(OrderNotPayable):
        await buyer_views.show_keys_again(db, order, 7)
    assert await deliveries_of(db, order) == [DeliveryKind.KEYS]  # the queued re-show is gone
    await invariants_hold(db)


# ---------------------------------------------------------------- checkouts with no recorded session


class _SlowGateway(FakeGateway):
    """A provider whose checkout opens only when the test says so, or fails after opening."""

    def __init__(self, *, fail: bool = False) -> None:
        super().__init__()
        self.opened, self.go, self.fail = asyncio.Event(), asyncio.Event(), fail

    async def start_checkout(self, request):
        started = await super().start_checkout(request)
        self.opened.set()
        await self.go.wait()
        if self.fail:
            raise PaymentUnavailable("timed out after the provider opened the checkout")
        return started


async def test_a_payment_before_the_checkout_is_recorded_waits_for_it(
    db: Database, vault: KeyVault
) -> None:
    gateway = _SlowGateway()
    product = await stocked(db, vault, keys=2)
    opening = asyncio.create_task(open_order(db, gateway, product.id, 7))
    await gateway.opened.wait()
    [order] = gateway.requests
    paid = gateway.payment(order)

    with pytest.raises(CheckoutNotRecorded):
        await orders.fulfil(db, paid, REFUND, event=Event("fake", "evt_early", "paid"))
    assert await status_of(db, order) == OrderStatus.PENDING
    gateway.go.set()
    await opening
    result = await orders.fulfil(db, paid, REFUND, event=Event("fake", "evt_early", "paid"))

    assert result.outcome is Outcome.FULFILLED  # the retry is applied, not a duplicate
    await invariants_hold(db)


async def test_a_payment_for_an_order_whose_checkout_was_never_recorded_fulfils_nothing(
    db: Database, vault: KeyVault
) -> None:
    gateway = _SlowGateway(fail=True)
    gateway.go.set()
    product = await stocked(db, vault, keys=2)
    with pytest.raises(PaymentUnavailable):
        await open_order(db, gateway, product.id, 7)
    [order] = gateway.requests
    assert await status_of(db, order) == OrderStatus.CANCELLED

    # A paid session naming the order, with the right amount: nothing says it is ours.
    result = await orders.fulfil(db, gateway.payment(order), REFUND)

    assert result.outcome is Outcome.FOREIGN
    assert await status_of(db, order) == OrderStatus.CANCELLED
    assert await keys_of(db, order) == []
    await invariants_hold(db)


# ---------------------------------------------------------------- hoarding


async def test_one_buyers_unpaid_checkouts_hold_at_most_the_larger_of_10_and_a_quarter(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    small = await stocked(db, vault, "SMALL", keys=20, max_per_order=20)
    big = await stocked(db, vault, "BIG", keys=80, max_per_order=50)

    await open_order(db, gateway, small.id, 7, quantity=6)
    with pytest.raises(HoldLimit) as refused:
        await open_order(db, gateway, small.id, 7, quantity=5)
    assert (refused.value.allowed, refused.value.cap) == (4, 10)
    await open_order(db, gateway, small.id, 7, quantity=4)  # exactly the cap
    await open_order(db, gateway, small.id, 8, quantity=10)  # another buyer is not affected

    await open_order(db, gateway, big.id, 9, quantity=20)  # a quarter of 80
    with pytest.raises(HoldLimit) as refused:
        await open_order(db, gateway, big.id, 9, quantity=1)
    assert (refused.value.allowed, refused.value.cap) == (0, 20)
    await invariants_hold(db)
