"""A subscription billed by its provider (Stripe's invoices), in the store, on SQLite and
PostgreSQL: one key per paid period however the reports repeat and race, and the reports of
a failed or ended subscription each applied once."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from store import orders, subscriptions
from store.crypto import KeyVault
from store.db import Database
from store.models import Delivery, DeliveryKind, Key, KeyStatus, Order, Subscription
from store.models import SubscriptionStatus as Status
from store.orders import Outcome
from store.payments import Event, Payment
from tests.store.conftest import REFUND, FakeGateway, open_order, scalar, stocked

SUBSCRIPTION = "sub_1Own"


async def started(db: Database, vault: KeyVault, gateway: FakeGateway, keys: int = 5) -> int:
    """A monthly product bought and paid: the order the subscription began with."""
    product = await stocked(db, vault, "CLUB", keys=keys, every="month")
    order_id = await open_order(db, gateway, product.id, buyer=500)
    paid = replace(gateway.payment(order_id), subscription_ref=SUBSCRIPTION)
    result = await orders.pay_period(db, paid, REFUND, event=Event("fake", "evt_first", "paid"))
    assert result.outcome is Outcome.FULFILLED
    return order_id


def invoice(order_id: int, n: int) -> Payment:
    """The n-th renewal invoice, as the provider reports it: it names the subscription only."""
    return Payment(
        order_id=order_id,
        state=orders.CheckoutState.PAID,
        payment_ref=f"in_{n}",
        amount_minor=999,
        currency="usd",
        period_end=datetime(2027, 1, 1, tzinfo=UTC) + timedelta(days=31 * n),
        subscription_ref=SUBSCRIPTION,
    )


async def test_racing_reports_of_each_invoice_give_one_key_per_invoice(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    first = await started(db, vault, gateway, keys=5)

    reports = [
        orders.pay_period(
            db, invoice(first, n), REFUND, event=Event("fake", f"evt_{n}_{copy}", "x")
        )
        for n in range(1, 4)
        for copy in range(6)
    ]
    outcomes = await asyncio.gather(*reports)

    assert sorted(r.outcome for r in outcomes).count(Outcome.FULFILLED) == 3
    assert {r.outcome for r in outcomes} == {Outcome.FULFILLED, Outcome.DUPLICATE}
    renewals = await scalar(db, select(func.count()).where(Order.subscription_id.is_not(None)))
    assert renewals == 3
    assert await scalar(db, select(func.count()).where(Key.status == KeyStatus.SOLD)) == 4
    ends = await scalar(db, select(Subscription.current_period_end))
    assert ends == invoice(first, 3).period_end


async def test_an_invoice_of_another_subscription_naming_our_order_is_foreign(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    first = await started(db, vault, gateway)
    posing = replace(invoice(first, 1), subscription_ref="sub_1Other")

    paid = await orders.pay_period(db, posing, REFUND, event=Event("fake", "evt_x", "x"))
    failed = await subscriptions.fall_behind(
        db, first, "sub_1Other", payment_ref="in_1", event=Event("fake", "evt_y", "y")
    )
    ended = await subscriptions.end(db, first, "sub_1Other", event=Event("fake", "evt_z", "z"))

    assert [paid.outcome, failed.outcome, ended.outcome] == [Outcome.FOREIGN] * 3
    assert await scalar(db, select(Subscription.status)) == Status.ACTIVE
    assert await scalar(db, select(func.count()).select_from(Order)) == 1


async def test_a_failure_tells_the_buyer_once_and_a_paid_invoice_restores_it(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    first = await started(db, vault, gateway)

    for n in range(3):  # the failure, its repeat, and the provider's next failed attempt
        await subscriptions.fall_behind(
            db, first, SUBSCRIPTION, payment_ref="in_1", event=Event("fake", f"evt_f{n}", "f")
        )
    notices = select(func.count()).where(Delivery.kind == DeliveryKind.SUBSCRIPTION_PAST_DUE)
    assert await scalar(db, select(Subscription.status)) == Status.PAST_DUE
    assert await scalar(db, notices) == 1

    await orders.pay_period(db, invoice(first, 1), REFUND, event=Event("fake", "evt_p", "p"))
    late = await subscriptions.fall_behind(
        db, first, SUBSCRIPTION, payment_ref="in_1", event=Event("fake", "evt_f9", "f")
    )

    assert late.outcome is Outcome.UNCHANGED  # that invoice is paid: the failure is stale
    assert await scalar(db, select(Subscription.status)) == Status.ACTIVE

    for n in range(2):
        await subscriptions.end(db, first, SUBSCRIPTION, event=Event("fake", f"evt_e{n}", "e"))
    ended = select(func.count()).where(Delivery.kind == DeliveryKind.SUBSCRIPTION_ENDED)
    assert await scalar(db, select(Subscription.status)) == Status.ENDED
    assert await scalar(db, ended) == 1
