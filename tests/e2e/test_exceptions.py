"""Paid with nothing to give, refunds and disputes: the exception paths through the running app.

Every test drives the real app (`bot.app.serve`) over real HTTP: buyers through the fake
Telegram, payments through the fake Stripe and signed webhooks. It proves that a payment
arriving after its reservation was released is refunded through Stripe exactly once (with
the stable idempotency key, surviving Stripe 500s until reconciliation finishes it) or, with
`OUT_OF_STOCK_POLICY=backorder`, fulfilled at the next restock, oldest payment first; that
`charge.refunded` revokes the order's keys for good and `charge.dispute.created` flags the
order, hands the admins the reveal log and, when configured, stops the buyer buying; and that
duplicated and reordered copies of those events have the effect of one. After every test,
the `afterwards` audit: `keyvend check` passes and no imported key is in a log, a CLI output
or an admin alert.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot import jobs
from store.models import Delivery, DeliveryKind, Key, KeyStatus, Order, OrderStatus, Reveal
from tests.e2e.conftest import ADMIN, Afterwards, Launch, Shop
from tests.e2e.helpers import (
    Checkout,
    checkout,
    expired,
    key_message,
    metric,
    new_keys,
    open_card,
    open_pay_link,
    order_key_statuses,
    order_status,
    pay,
    post_ok,
    reply,
    scalar,
    stock,
    text_to,
    wait_for_status,
    wait_until,
)
from tests.fakes.stripe import FakeStripe

pytestmark = pytest.mark.usefixtures("afterwards")


async def add_product(shop: Shop, sku: str, keys: list[str]) -> None:
    """A $9.99 "<SKU> game" with these keys; low-stock alerts off so they do not crowd the admins."""
    await stock(shop, sku, keys, name=f"{sku} game", low_stock_threshold=0)


async def available(shop: Shop) -> int:
    return await scalar(shop, select(func.count()).where(Key.status == KeyStatus.AVAILABLE))


async def deliveries_of(shop: Shop, order_id: int, kind: DeliveryKind) -> int:
    return await scalar(
        shop, select(func.count()).where(Delivery.order_id == order_id, Delivery.kind == kind)
    )


def refund_requests(stripe: FakeStripe) -> list:
    return [r for r in stripe.requests if r.method == "POST" and r.path == "/v1/refunds"]


def refunds_of(stripe: FakeStripe, payment_intent: str) -> list[dict]:
    return [r for r in stripe.refunds.values() if r["payment_intent"] == payment_intent]


# ---------------------------------------------------------------- out of stock: refund


async def _paid_after_release(shop: Shop, sku: str) -> tuple[Checkout, Checkout]:
    """Buyer A's reservation is released before A pays, and buyer B buys the only key meanwhile.

    Returns (A, B) with B fulfilled and A paid at Stripe, A's `completed` event not yet posted.
    """
    await add_product(shop, sku, new_keys(1, sku))
    late = await checkout(shop, 2001, sku)
    await post_ok(shop, expired(shop.stripe, late.session_id))
    assert await order_status(shop, late.order_id) == OrderStatus.EXPIRED
    assert await available(shop) == 1
    winner = await checkout(shop, 2002, sku)
    await pay(shop, winner)
    await key_message(shop, winner.buyer)
    assert await available(shop) == 0
    shop.stripe.pay(late.session_id)
    return late, winner


async def test_payment_after_release_with_stock_gone_is_refunded_once(launch: Launch) -> None:
    async with launch() as shop:
        late, winner = await _paid_after_release(shop, "SOLO")
        completed = shop.stripe.completed_event(late.session_id)
        await post_ok(shop, completed)

        await wait_for_status(shop, late.order_id, OrderStatus.REFUNDED)
        intent = shop.stripe.sessions[late.session_id]["payment_intent"]
        [refund] = refunds_of(shop.stripe, intent)
        assert refund["amount"] == 999
        assert {r.idempotency_key for r in refund_requests(shop.stripe)} == {
            f"refund-order-{late.order_id}"
        }
        await text_to(shop, late.buyer, f"Order #{late.order_id} (SOLO game × 1) was refunded")
        await text_to(
            shop,
            ADMIN,
            f"Order #{late.order_id} (SOLO) was paid with nothing left to give: refunding",
        )
        await text_to(shop, ADMIN, f"Order #{late.order_id} was refunded")

        # The refund path again, every way it can recur: the job, a crashed pass that made the
        # refund but never recorded it (the same idempotency key replays it), Stripe's copy.
        await asyncio.gather(shop.parts.shop.make_owed_refunds(), jobs.reconcile(shop.parts.shop))
        again = await shop.parts.shop.card.refund(late.order_id, intent, 999)
        assert again == refund["id"]
        await post_ok(shop, completed)
        await post_ok(shop, shop.stripe.event(completed["type"], completed["data"]["object"]))

        assert len(refunds_of(shop.stripe, intent)) == 1
        assert await order_status(shop, late.order_id) == OrderStatus.REFUNDED
        assert await deliveries_of(shop, late.order_id, DeliveryKind.REFUNDED) == 1
        assert await order_key_statuses(shop, late.order_id) == []
        assert await order_key_statuses(shop, winner.order_id) == [KeyStatus.SOLD]


async def test_stripe_500s_during_refund_leave_it_pending_until_reconciliation(
    launch: Launch,
) -> None:
    async with launch() as shop:
        late, _ = await _paid_after_release(shop, "SOLO")
        # Every attempt the SDK makes (the first and its two retries) gets a 500.
        shop.stripe.fail_next(3, 500)
        await post_ok(shop, shop.stripe.completed_event(late.session_id))

        async def retries_spent() -> bool:
            return shop.stripe.failures_pending == 0 and len(refund_requests(shop.stripe)) == 3

        await wait_until(retries_spent, what="the refund's three failed attempts")
        assert await order_status(shop, late.order_id) == OrderStatus.REFUND_PENDING
        intent = shop.stripe.sessions[late.session_id]["payment_intent"]
        assert refunds_of(shop.stripe, intent) == []

        await jobs.reconcile(shop.parts.shop)

        assert await order_status(shop, late.order_id) == OrderStatus.REFUNDED
        assert len(refunds_of(shop.stripe, intent)) == 1
        assert [r.status for r in refund_requests(shop.stripe)] == [500, 500, 500, 200]
        assert {r.idempotency_key for r in refund_requests(shop.stripe)} == {
            f"refund-order-{late.order_id}"
        }
        await text_to(shop, late.buyer, f"Order #{late.order_id} (SOLO game × 1) was refunded")


# ---------------------------------------------------------------- out of stock: backorder


async def test_backorders_are_told_and_filled_at_restock_oldest_payment_first(
    launch: Launch, afterwards: Afterwards, tmp_path: Path
) -> None:
    async with launch(out_of_stock_policy="backorder") as shop:
        await add_product(shop, "RARE", new_keys(3, "RARE"))
        # The smaller order is opened first (lower id) but paid last: the queue is by payment.
        small = await checkout(shop, 3001, "RARE", 1)
        big = await checkout(shop, 3002, "RARE", 2)
        for sale in (small, big):
            await post_ok(shop, expired(shop.stripe, sale.session_id))
        everything = await checkout(shop, 3003, "RARE", 3)
        await pay(shop, everything)
        await key_message(shop, everything.buyer)

        await pay(shop, big)
        await pay(shop, small)
        for sale in (big, small):
            assert await order_status(shop, sale.order_id) == OrderStatus.BACKORDERED
            await text_to(shop, sale.buyer, "will arrive here as soon as the seller restocks")
            await text_to(
                shop, ADMIN, f"Order #{sale.order_id} (RARE) was paid with nothing left to give"
            )

        # One key: enough for the small order, but the bigger, older one is first in line.
        first = new_keys(1, "RARE")
        await reply(shop.telegram, ADMIN, "/restock RARE\n" + first[0], contains="added 1, skipped")
        assert await order_status(shop, big.order_id) == OrderStatus.BACKORDERED
        assert await order_status(shop, small.order_id) == OrderStatus.BACKORDERED
        assert await available(shop) == 1

        # One more through the command line: the big order gets both, the small one waits.
        second = new_keys(1, "RARE")
        (tmp_path / "keys.txt").write_text(second[0] + "\n")
        imported = await shop.cli("keys", "import", "RARE", str(tmp_path / "keys.txt"))
        afterwards.outputs += [imported.stdout, imported.stderr]
        assert imported.returncode == 0, imported.stderr
        assert "filled 1 backordered orders" in imported.stdout
        delivered = await key_message(shop, big.buyer)
        assert sorted(delivered.spoiler_texts()) == sorted(first + second)
        assert await order_status(shop, small.order_id) == OrderStatus.BACKORDERED

        third = new_keys(1, "RARE")
        await reply(
            shop.telegram,
            ADMIN,
            "/restock RARE\n" + third[0],
            contains="Filled 1 backordered order.",
        )
        delivered = await key_message(shop, small.buyer)
        assert delivered.spoiler_texts() == third
        assert await order_status(shop, small.order_id) == OrderStatus.FULFILLED
        assert await order_status(shop, big.order_id) == OrderStatus.FULFILLED
        assert await available(shop) == 0


# ---------------------------------------------------------------- refunds


async def test_refund_revokes_the_keys_for_good_and_copies_change_nothing(launch: Launch) -> None:
    async with launch() as shop:
        first, second = new_keys(2, "DUO")
        await add_product(shop, "DUO", [first, second])
        buyer = await checkout(shop, 4001, "DUO")
        completed = await pay(shop, buyer)
        assert (await key_message(shop, buyer.buyer)).spoiler_texts() == [first]

        # A partial refund (say, a goodwill dollar) leaves the order alone but tells the admins.
        await post_ok(
            shop, shop.stripe.charge_refunded_event(buyer.session_id, amount_refunded=100)
        )
        await text_to(shop, ADMIN, f"Order #{buyer.order_id} was partially refunded")
        assert await order_status(shop, buyer.order_id) == OrderStatus.FULFILLED
        assert await order_key_statuses(shop, buyer.order_id) == [KeyStatus.SOLD]

        refunded = shop.stripe.charge_refunded_event(buyer.session_id)
        await post_ok(shop, refunded)
        assert await order_status(shop, buyer.order_id) == OrderStatus.REFUNDED
        assert await order_key_statuses(shop, buyer.order_id) == [KeyStatus.REVOKED]
        await text_to(shop, buyer.buyer, f"Order #{buyer.order_id} (DUO game × 1) was refunded")
        await text_to(shop, ADMIN, f"Order #{buyer.order_id} was refunded; its keys are revoked")

        # Stripe's retry of the refund, a second copy of it, and a late copy of the payment.
        await post_ok(shop, refunded)
        await post_ok(shop, shop.stripe.event("charge.refunded", refunded["data"]["object"]))
        await post_ok(shop, completed)
        await post_ok(shop, shop.stripe.event(completed["type"], completed["data"]["object"]))
        assert await order_status(shop, buyer.order_id) == OrderStatus.REFUNDED
        assert await order_key_statuses(shop, buyer.order_id) == [KeyStatus.REVOKED]
        assert await deliveries_of(shop, buyer.order_id, DeliveryKind.REFUNDED) == 1
        assert await deliveries_of(shop, buyer.order_id, DeliveryKind.KEYS) == 1

        # The revoked key never comes back: the next buyer gets the other one.
        assert await available(shop) == 1
        later = await checkout(shop, 4002, "DUO")
        await pay(shop, later)
        assert (await key_message(shop, later.buyer)).spoiler_texts() == [second]


async def test_refund_arriving_before_the_payment_event_still_wins(launch: Launch) -> None:
    async with launch() as shop:
        await add_product(shop, "EARLY", new_keys(2, "EARLY"))
        buyer = await checkout(shop, 4101, "EARLY")
        completed = await pay(shop, buyer, post=False)
        # Stripe does not promise order: the refund (made in the dashboard) arrives first.
        await post_ok(shop, shop.stripe.charge_refunded_event(buyer.session_id))
        await post_ok(shop, completed)

        assert await order_status(shop, buyer.order_id) == OrderStatus.REFUNDED
        assert KeyStatus.SOLD not in await order_key_statuses(shop, buyer.order_id)
        assert await deliveries_of(shop, buyer.order_id, DeliveryKind.KEYS) == 0


# ---------------------------------------------------------------- disputes


@pytest.mark.parametrize("blacklist", [True, False], ids=["blacklist", "no-blacklist"])
async def test_dispute_flags_the_order_with_the_reveal_log(launch: Launch, blacklist: bool) -> None:
    async with launch(blacklist_on_dispute=blacklist) as shop:
        await add_product(shop, "DISP", new_keys(3, "DISP"))
        buyer = await checkout(shop, 5001, "DISP")
        await pay(shop, buyer)
        first = await key_message(shop, buyer.buyer)
        # The buyer shows the keys once more from "my orders": a second reveal.
        since = time.monotonic()
        shop.telegram.press(buyer.buyer, first, f"k:{buyer.order_id}")
        await key_message(shop, buyer.buyer, since=since)

        async def two_reveals() -> bool:
            return (
                await scalar(shop, select(func.count()).where(Reveal.order_id == buyer.order_id))
                == 2
            )

        await wait_until(two_reveals, what="both reveals to be recorded")

        dispute = shop.stripe.dispute_created_event(buyer.session_id)
        await post_ok(shop, dispute)
        await post_ok(shop, dispute)
        await post_ok(shop, shop.stripe.event(dispute["type"], dispute["data"]["object"]))
        assert await order_status(shop, buyer.order_id) == OrderStatus.DISPUTED
        assert await order_key_statuses(shop, buyer.order_id) == [KeyStatus.SOLD]

        alert = await text_to(shop, ADMIN, f"Dispute on order #{buyer.order_id}")

        async def reveal_log(session):
            return (
                await session.execute(
                    select(Reveal.revealed_at, Reveal.how)
                    .where(Reveal.order_id == buyer.order_id)
                    .order_by(Reveal.id)
                )
            ).all()

        for at, how in await shop.db.read(reveal_log):
            assert f"- {at:%Y-%m-%d %H:%M:%S} UTC, {how}" in alert.text
        assert ("blocked from buying" in alert.text) is blacklist
        # Raised once for the three copies (the counter moves as the alert is raised, before
        # the notifier sends it, so a late duplicate could not hide from this).
        assert await metric(shop, "keyvend_alerts_total", kind="dispute") == 1

        if blacklist:
            card = await open_card(shop, buyer.buyer, "DISP", 1)
            refused = await open_pay_link(shop.http, card)
            assert (refused.status, refused.reason) == (403, "Sorry, you can't buy in this shop.")
            orders = await scalar(shop, select(func.count()).where(Order.buyer_id == buyer.buyer))
            assert orders == 1
        else:
            again = await checkout(shop, buyer.buyer, "DISP")
            assert await order_status(shop, again.order_id) == OrderStatus.PENDING


async def test_dispute_arriving_before_the_payment_event_is_not_lost(launch: Launch) -> None:
    async with launch(blacklist_on_dispute=True) as shop:
        await add_product(shop, "LATE", new_keys(2, "LATE"))
        buyer = await checkout(shop, 5101, "LATE")
        completed = await pay(shop, buyer, post=False)
        await post_ok(shop, shop.stripe.dispute_created_event(buyer.session_id))
        await post_ok(shop, completed)

        assert await order_status(shop, buyer.order_id) == OrderStatus.DISPUTED
        await text_to(shop, ADMIN, f"Dispute on order #{buyer.order_id}")
