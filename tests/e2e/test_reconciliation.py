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

from sqlalchemy import func, select

from bot import jobs
from store import orders
from store.db import Database
from store.models import Key, KeyStatus, Order, OrderStatus
from store.orders import ORPHAN_GRACE, Outcome
from tests.e2e.conftest import ADMIN
from tests.e2e.test_exceptions import (  # noqa: F401 - fixtures: `afterwards` (autouse), `launch`
    Afterwards,
    Checkout,
    Launch,
    Live,
    add_product,
    afterwards,
    fresh_keys,
    key_message,
    key_statuses,
    launch,
    open_checkout,
    order_status,
    pay,
    say,
    scalar,
    wait_for_status,
    wait_until,
)

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


def asked_about(live: Live, checkout: Checkout) -> int:
    """How many API calls the app made about this order's Checkout Session."""
    return sum(1 for r in live.stripe.requests if checkout.session_id in r.path)


class _Stalled:
    """A payment provider that never answers, so a checkout can be cut off mid-way."""

    name = "stripe"

    async def start_checkout(self, request):
        await asyncio.Event().wait()


async def orphan(live: Live, buyer: int, product_id: int) -> int:
    """An order whose checkout was never recorded: the task died while Stripe was being asked."""
    task = asyncio.create_task(orders.checkout(
        live.db, _Stalled(), buyer_id=buyer, language="en", product_id=product_id, quantity=1,
        policy=live.parts.shop.checkout_policy,
    ))

    async def opened() -> bool:
        return await scalar(live.db, select(Order.id).where(Order.buyer_id == buyer)) is not None

    await wait_until(opened, "the order to be opened")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return await scalar(live.db, select(Order.id).where(Order.buyer_id == buyer))


async def paid_silently(live: Live, buyer: int, sku: str) -> Checkout:
    """A buyer pays at Stripe and Stripe's `completed` event never arrives."""
    checkout = await open_checkout(live, buyer, sku)
    await pay(live, checkout, post=False)
    return checkout


async def test_one_pass_settles_what_is_overdue_and_nothing_else(launch: Launch, afterwards: Afterwards) -> None:
    async with launch() as live:
        product = await add_product(live, afterwards, SKU, fresh_keys(SKU, 6))
        paid = await paid_silently(live, 8001, SKU)
        lapsed = await open_checkout(live, 8002, SKU)
        live.stripe.expire(lapsed.session_id)  # expired at Stripe; the event never came
        still_open = await open_checkout(live, 8003, SKU)
        old_orphan = await orphan(live, 8004, product)
        young_orphan = await orphan(live, 8005, product)

        # Nothing is due yet: a pass asks Stripe about nothing and changes nothing.
        assert await jobs.reconcile(live.parts.shop) == []
        assert asked_about(live, paid) == asked_about(live, lapsed) == 0
        for order in (paid.order_id, lapsed.order_id, still_open.order_id, old_orphan, young_orphan):
            assert await order_status(live.db, order) == OrderStatus.PENDING

        for order in (paid.order_id, lapsed.order_id):
            await age(live.db, order, OVERDUE)
        await age(live.db, old_orphan, ORPHAN_GRACE + timedelta(minutes=1))
        results = await jobs.reconcile(live.parts.shop)

        assert sorted(r.outcome for r in results) == [Outcome.FULFILLED, Outcome.RELEASED]
        assert (await key_message(live, paid.buyer)).spoiler_texts()
        assert await key_statuses(live.db, paid.order_id) == [KeyStatus.SOLD]
        assert await order_status(live.db, lapsed.order_id) == OrderStatus.EXPIRED
        assert await order_status(live.db, old_orphan) == OrderStatus.CANCELLED
        for released in (lapsed.order_id, old_orphan):
            assert await key_statuses(live.db, released) == []
        for untouched in (still_open.order_id, young_orphan):
            assert await order_status(live.db, untouched) == OrderStatus.PENDING
            assert await key_statuses(live.db, untouched) == [KeyStatus.RESERVED]
        assert asked_about(live, still_open) == 0
        assert live.stripe.sessions[still_open.session_id]["status"] == "open"
        assert await scalar(live.db, select(func.count()).where(Key.status == KeyStatus.AVAILABLE)) == 3


async def test_the_job_settles_a_dropped_webhook_every_interval(launch: Launch, afterwards: Afterwards) -> None:
    async with launch(reconcile_interval=timedelta(seconds=1)) as live:
        await add_product(live, afterwards, SKU, fresh_keys(SKU, 2))
        paid = await paid_silently(live, 8101, SKU)
        lapsed = await open_checkout(live, 8102, SKU)
        live.stripe.expire(lapsed.session_id)
        await age(live.db, paid.order_id, OVERDUE)
        await age(live.db, lapsed.order_id, OVERDUE)

        # No direct call: the app's own job, on its next round, finds both.
        assert (await key_message(live, paid.buyer)).spoiler_texts()
        await wait_for_status(live.db, paid.order_id, OrderStatus.FULFILLED)
        await wait_for_status(live.db, lapsed.order_id, OrderStatus.EXPIRED)
        assert await key_statuses(live.db, lapsed.order_id) == []


async def test_the_job_at_start_settles_a_payment_made_while_the_shop_was_down(
    launch: Launch, afterwards: Afterwards
) -> None:
    async with launch() as live:
        await add_product(live, afterwards, SKU, fresh_keys(SKU, 2))
        checkout = await open_checkout(live, 8201, SKU)
    # The shop is down: the buyer pays, Stripe's event finds nobody and is given up on.
    live.stripe.pay(checkout.session_id)
    await age(live.db, checkout.order_id, OVERDUE)

    async with launch() as live:  # default interval (minutes): only the run at start
        assert (await key_message(live, checkout.buyer)).spoiler_texts()
        await wait_for_status(live.db, checkout.order_id, OrderStatus.FULFILLED)


async def test_admin_confirm_settles_only_what_stripe_says_is_paid(launch: Launch, afterwards: Afterwards) -> None:
    async with launch() as live:
        await add_product(live, afterwards, SKU, fresh_keys(SKU, 3))
        paid = await paid_silently(live, 8301, SKU)
        unpaid = await open_checkout(live, 8302, SKU)
        tg = live.telegram

        async def confirm(user: int, order: int | str, expect: str) -> None:
            await say(tg, user, f"/confirm {order}", lambda m: expect in (m.text or ""))

        # A buyer cannot use it at all: the same answer as any unknown command.
        await confirm(unpaid.buyer, paid.order_id, "I don't know that command")
        assert asked_about(live, paid) == 0
        await confirm(ADMIN, "abc", "Usage: /confirm ORDER_ID")
        await confirm(ADMIN, 987654, "Order #987654: no order 987654")

        # Stripe says the order is unpaid, or cannot say: it stays pending.
        await confirm(ADMIN, unpaid.order_id, f"Order #{unpaid.order_id}: unchanged")
        assert await order_status(live.db, unpaid.order_id) == OrderStatus.PENDING
        assert live.stripe.sessions[unpaid.session_id]["status"] == "open"
        live.stripe.down = True
        await confirm(ADMIN, paid.order_id, f"Order #{paid.order_id}: Stripe could not check a checkout")
        live.stripe.down = False
        assert await order_status(live.db, paid.order_id) == OrderStatus.PENDING

        await confirm(ADMIN, f"#{paid.order_id}", f"Order #{paid.order_id}: fulfilled")
        assert (await key_message(live, paid.buyer)).spoiler_texts()
        assert await order_status(live.db, paid.order_id) == OrderStatus.FULFILLED
        await confirm(ADMIN, paid.order_id, f"Order #{paid.order_id}: order {paid.order_id} is fulfilled")
        assert await key_statuses(live.db, paid.order_id) == [KeyStatus.SOLD]


async def test_buyer_back_from_the_payment_page_settles_a_lost_webhook(
    launch: Launch, afterwards: Afterwards
) -> None:
    async with launch() as live:
        await add_product(live, afterwards, SKU, fresh_keys(SKU, 3))
        paid = await paid_silently(live, 8401, SKU)
        unpaid = await open_checkout(live, 8402, SKU)
        tg = live.telegram

        # Someone else's order id in the link: nothing to see, nothing asked, nothing changed.
        await say(tg, 8403, f"/start paid_{paid.order_id}", lambda m: "Order not found." in (m.text or ""))
        assert asked_about(live, paid) == 0
        assert await order_status(live.db, paid.order_id) == OrderStatus.PENDING

        # Back without paying (the cancel link is the same deep link): still awaiting payment.
        await say(tg, unpaid.buyer, f"/start paid_{unpaid.order_id}", lambda m: "awaiting payment" in (m.text or ""))
        assert await order_status(live.db, unpaid.order_id) == OrderStatus.PENDING

        await say(tg, paid.buyer, f"/start paid_{paid.order_id}", lambda m: "Status: delivered" in (m.text or ""))
        assert (await key_message(live, paid.buyer)).spoiler_texts()
        assert await order_status(live.db, paid.order_id) == OrderStatus.FULFILLED
