"""Reconciliation: orders settle by asking Stripe when the webhook never comes.

Through the running app and real HTTP: a buyer who paid at Stripe but whose
`checkout.session.completed` was dropped gets their keys from the reconciliation job (at
start, every RECONCILE_INTERVAL, or one pass run directly); a session that expired at Stripe
without an `expired` event has its reservation released; an order whose checkout was never
recorded (the process died in between) is cancelled after the orphan grace; an admin's
`/confirm ORDER_ID` and the buyer's return through `/start paid_<id>` settle a paid order
with Stripe's word. Nothing anyone can type marks an order paid that Stripe does not
report paid. Time is moved by ageing the order rows, never by sleeping.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from bot import jobs
from store import orders
from store.db import Database
from store.models import Key, KeyStatus, Order, OrderStatus
from store.orders import Outcome
from store.reconciliation import ORPHAN_GRACE
from tests.e2e.conftest import ADMIN, Launch, Shop
from tests.e2e.helpers import (
    Checkout,
    checkout,
    key_message,
    new_keys,
    order_key_statuses,
    order_status,
    pay,
    reply,
    scalar,
    stock,
    wait_for_status,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("afterwards")

SKU = "RECON"
# Past the checkout's lifetime (30 min) and reconciliation's grace after it.
OVERDUE = timedelta(hours=2)


async def age(db: Database, order_id: int, by: timedelta) -> None:
    """Move an order into the past: as if `by` had gone by since it was opened."""

    async def work(session):
        order = await session.get(Order, order_id)
        order.created_at -= by
        order.reserved_until -= by
        order.check_after -= by

    await db.write(work)


def asked_about(shop: Shop, sale: Checkout) -> int:
    """How many API calls the app made about this order's Checkout Session."""
    return sum(1 for r in shop.stripe.requests if sale.session_id in r.path)


class _Stalled:
    """A payment provider that never answers, so a checkout can be cut off mid-way."""

    name = "stripe"
    currency = None

    async def start_checkout(self, request):
        await asyncio.Event().wait()


async def orphan(shop: Shop, buyer: int, product_id: int) -> int:
    """An order whose checkout was never recorded: the task died while Stripe was being asked."""
    task = asyncio.create_task(
        orders.checkout(
            shop.db,
            _Stalled(),
            buyer_id=buyer,
            language="en",
            product_id=product_id,
            quantity=1,
            policy=shop.parts.shop.checkout_policy,
        )
    )

    async def opened() -> bool:
        return await scalar(shop, select(Order.id).where(Order.buyer_id == buyer)) is not None

    await wait_until(opened, what="the order to be opened")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return await scalar(shop, select(Order.id).where(Order.buyer_id == buyer))


async def paid_silently(shop: Shop, buyer: int, sku: str) -> Checkout:
    """A buyer pays at Stripe and Stripe's `completed` event never arrives."""
    sale = await checkout(shop, buyer, sku)
    await pay(shop, sale, post=False)
    return sale


async def test_one_pass_settles_what_is_overdue_and_nothing_else(launch: Launch) -> None:
    async with launch() as shop:
        product = await stock(shop, SKU, new_keys(6, SKU), low_stock_threshold=0)
        paid = await paid_silently(shop, 8001, SKU)
        lapsed = await checkout(shop, 8002, SKU)
        shop.stripe.expire(lapsed.session_id)  # expired at Stripe; the event never came
        still_open = await checkout(shop, 8003, SKU)
        old_orphan = await orphan(shop, 8004, product.id)
        young_orphan = await orphan(shop, 8005, product.id)

        # Nothing is due yet: a pass asks Stripe about nothing and changes nothing.
        assert await jobs.reconcile(shop.parts.shop) == []
        assert asked_about(shop, paid) == asked_about(shop, lapsed) == 0
        for order in (
            paid.order_id,
            lapsed.order_id,
            still_open.order_id,
            old_orphan,
            young_orphan,
        ):
            assert await order_status(shop, order) == OrderStatus.PENDING

        for order in (paid.order_id, lapsed.order_id):
            await age(shop.db, order, OVERDUE)
        await age(shop.db, old_orphan, ORPHAN_GRACE + timedelta(minutes=1))
        results = await jobs.reconcile(shop.parts.shop)

        assert sorted(r.outcome for r in results) == [Outcome.FULFILLED, Outcome.RELEASED]
        assert (await key_message(shop, paid.buyer)).spoiler_texts()
        assert await order_key_statuses(shop, paid.order_id) == [KeyStatus.SOLD]
        assert await order_status(shop, lapsed.order_id) == OrderStatus.EXPIRED
        assert await order_status(shop, old_orphan) == OrderStatus.CANCELLED
        for released in (lapsed.order_id, old_orphan):
            assert await order_key_statuses(shop, released) == []
        for untouched in (still_open.order_id, young_orphan):
            assert await order_status(shop, untouched) == OrderStatus.PENDING
            assert await order_key_statuses(shop, untouched) == [KeyStatus.RESERVED]
        assert asked_about(shop, still_open) == 0
        assert shop.stripe.sessions[still_open.session_id]["status"] == "open"
        assert (
            await scalar(shop, select(func.count()).where(Key.status == KeyStatus.AVAILABLE)) == 3
        )


async def test_the_job_settles_a_dropped_webhook_every_interval(launch: Launch) -> None:
    async with launch(reconcile_interval=timedelta(seconds=1)) as shop:
        await stock(shop, SKU, new_keys(2, SKU), low_stock_threshold=0)
        paid = await paid_silently(shop, 8101, SKU)
        lapsed = await checkout(shop, 8102, SKU)
        shop.stripe.expire(lapsed.session_id)
        await age(shop.db, paid.order_id, OVERDUE)
        await age(shop.db, lapsed.order_id, OVERDUE)

        # No direct call: the app's own job, on its next round, finds both.
        assert (await key_message(shop, paid.buyer)).spoiler_texts()
        await wait_for_status(shop, paid.order_id, OrderStatus.FULFILLED)
        await wait_for_status(shop, lapsed.order_id, OrderStatus.EXPIRED)
        assert await order_key_statuses(shop, lapsed.order_id) == []


async def test_the_job_at_start_settles_a_payment_made_while_the_shop_was_down(
    launch: Launch,
) -> None:
    async with launch() as shop:
        await stock(shop, SKU, new_keys(2, SKU), low_stock_threshold=0)
        sale = await checkout(shop, 8201, SKU)
    # The shop is down: the buyer pays, Stripe's event finds nobody and is given up on.
    shop.stripe.pay(sale.session_id)
    await age(shop.db, sale.order_id, OVERDUE)

    async with launch() as shop:  # default interval (minutes): only the run at start
        assert (await key_message(shop, sale.buyer)).spoiler_texts()
        await wait_for_status(shop, sale.order_id, OrderStatus.FULFILLED)


async def test_admin_confirm_settles_only_what_stripe_says_is_paid(launch: Launch) -> None:
    async with launch() as shop:
        await stock(shop, SKU, new_keys(3, SKU), low_stock_threshold=0)
        paid = await paid_silently(shop, 8301, SKU)
        unpaid = await checkout(shop, 8302, SKU)
        tg = shop.telegram

        async def confirm(user: int, order: int | str, expect: str) -> None:
            await reply(tg, user, f"/confirm {order}", contains=expect)

        # A buyer cannot use it at all: the same answer as any unknown command.
        await confirm(unpaid.buyer, paid.order_id, "I don't know that command")
        assert asked_about(shop, paid) == 0
        await confirm(ADMIN, "abc", "Usage: /confirm ORDER_ID")
        await confirm(ADMIN, 987654, "Order #987654: no order 987654")

        # Stripe says the order is unpaid, or cannot say: it stays pending.
        await confirm(ADMIN, unpaid.order_id, f"Order #{unpaid.order_id}: unchanged")
        assert await order_status(shop, unpaid.order_id) == OrderStatus.PENDING
        assert shop.stripe.sessions[unpaid.session_id]["status"] == "open"
        shop.stripe.down = True
        await confirm(
            ADMIN, paid.order_id, f"Order #{paid.order_id}: Stripe could not check a checkout"
        )
        shop.stripe.down = False
        assert await order_status(shop, paid.order_id) == OrderStatus.PENDING

        await confirm(ADMIN, f"#{paid.order_id}", f"Order #{paid.order_id}: fulfilled")
        assert (await key_message(shop, paid.buyer)).spoiler_texts()
        assert await order_status(shop, paid.order_id) == OrderStatus.FULFILLED
        await confirm(
            ADMIN, paid.order_id, f"Order #{paid.order_id}: order {paid.order_id} is fulfilled"
        )
        assert await order_key_statuses(shop, paid.order_id) == [KeyStatus.SOLD]


async def test_buyer_back_from_the_payment_page_settles_a_lost_webhook(launch: Launch) -> None:
    async with launch() as shop:
        await stock(shop, SKU, new_keys(3, SKU), low_stock_threshold=0)
        paid = await paid_silently(shop, 8401, SKU)
        unpaid = await checkout(shop, 8402, SKU)
        tg = shop.telegram

        # Someone else's order id in the link: nothing to see, nothing asked, nothing changed.
        await reply(tg, 8403, f"/start paid_{paid.order_id}", contains="Order not found.")
        assert asked_about(shop, paid) == 0
        assert await order_status(shop, paid.order_id) == OrderStatus.PENDING

        # Back without paying (the cancel link is the same deep link): still awaiting payment.
        await reply(tg, unpaid.buyer, f"/start paid_{unpaid.order_id}", contains="awaiting payment")
        assert await order_status(shop, unpaid.order_id) == OrderStatus.PENDING

        await reply(tg, paid.buyer, f"/start paid_{paid.order_id}", contains="Status: delivered")
        assert (await key_message(shop, paid.buyer)).spoiler_texts()
        assert await order_status(shop, paid.order_id) == OrderStatus.FULFILLED
