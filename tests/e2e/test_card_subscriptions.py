"""Card subscriptions through the running app: Stripe Checkout in subscription mode, then
Stripe's own invoices, as signed webhooks to the real aiohttp app and the real PTB client
against the fake Bot API.

A buyer subscribes from the product card and pays on the (fake) Stripe page; the checkout
starts the subscription and its first key. Each paid invoice after that is one new key,
however many times and in whatever order Stripe sends it; a failed one makes the
subscription past due and tells the buyer how to fix it, in their language; Stripe's
deletion ends it and tells the buyer. Cancelling from /subscriptions asks Stripe to stop at
the period's end. An invoice for a subscription that is not the one the order started is
acknowledged and ignored. Outcomes are read from the database.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from bot import jobs
from store.models import Key, KeyStatus, Order, OrderStatus, Subscription, SubscriptionStatus
from tests.e2e.conftest import Launch, Shop
from tests.e2e.helpers import (
    Checkout,
    key_message,
    key_messages,
    new_keys,
    post_concurrently,
    post_ok,
    reply,
    rows,
    scalar,
    sent_since,
    stock,
    text,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("afterwards")

BUYER = 8001
SKU = "CLUB"
PAST_DUE_NOTICE = "did not go through"


async def card_subscribe(shop: Shop, buyer: int, *, language: str = "en") -> Checkout:
    """Open the card's "🔁 Subscribe: $… a month" pay link: the order and its Stripe session."""
    tg = shop.telegram
    since = time.monotonic()
    tg.message(buyer, f"/buy {SKU}", language_code=language)
    seen = sent_since(tg, buyer, since)
    card = await tg.wait_for(lambda m: seen(m) and bool(m.buttons()))
    by_card = next(b for b in card.buttons() if "$" in b["text"])
    async with shop.http.get(by_card["url"], allow_redirects=False) as response:
        assert response.status == 303, await response.text()
        session_id = response.headers["Location"].rsplit("/", 1)[1]
    order_id = int(shop.stripe.sessions[session_id]["client_reference_id"])
    await wait_until(
        lambda: scalar(shop, select(Order.provider_ref).where(Order.id == order_id)),
        what="the checkout to be recorded",
    )
    return Checkout(buyer, order_id, session_id)


async def subscribed(shop: Shop, buyer: int = BUYER, *, language: str = "en") -> dict[str, Any]:
    """Subscribe and pay on Stripe; Stripe reports the checkout, then its first invoice (which
    says when the period ends): Stripe's subscription."""
    sale = await card_subscribe(shop, buyer, language=language)
    shop.stripe.pay(sale.session_id)
    await post_ok(shop, shop.stripe.completed_event(sale.session_id))
    subscription = shop.stripe.subscription_for_order(sale.order_id)
    await post_ok(shop, shop.stripe.invoice_event("invoice.paid", subscription["latest_invoice"]))
    await key_message(shop, buyer)
    return subscription


def renewal(shop: Shop, subscription: dict[str, Any], **options: Any) -> str:
    """Stripe bills the next period; the invoice's id."""
    return shop.stripe.renew(subscription["id"], **options)["id"]


async def subscription_row(shop: Shop) -> Subscription:
    return await scalar(shop, select(Subscription))


async def test_a_card_subscription_renewed_12_times_gives_12_new_keys(
    launch: Launch, database_url: str
) -> None:
    async with launch(database_url) as shop:
        added = await shop.cli(
            "product",
            "add",
            SKU,
            "--name",
            "Club",
            "--price",
            "4.99",
            "--currency",
            "usd",
            "--every",
            "month",
        )
        assert added.returncode == 0, added.stderr
        keys = new_keys(15, SKU)
        imported = await shop.cli("keys", "import", SKU, "-", stdin="\n".join(keys).encode())
        assert imported.returncode == 0, imported.stderr
        stripe = shop.stripe

        sale = await card_subscribe(shop, BUYER)
        session = stripe.sessions[sale.session_id]
        assert session["mode"] == "subscription" and session["amount_total"] == 499
        created = next(r for r in stripe.requests if r.path == "/v1/checkout/sessions")
        assert created.params["line_items"][0]["price_data"]["recurring"] == {"interval": "month"}
        assert created.params["subscription_data"]["metadata"] == {"order_id": str(sale.order_id)}

        stripe.pay(sale.session_id)
        subscription = stripe.subscription_for_order(sale.order_id)
        first_invoice = subscription["latest_invoice"]
        invoices = [renewal(shop, subscription) for _ in range(12)]
        # Every event twice over (the same event again, and another event for the same
        # invoice), the checkout's own event and its first invoice among them, all shuffled.
        completed = stripe.completed_event(sale.session_id)
        events = [completed, completed]
        for invoice in [first_invoice, *invoices]:
            event = stripe.invoice_event("invoice.paid", invoice)
            events += [event, event, stripe.invoice_event("invoice.paid", invoice)]
        random.Random(9).shuffle(events)
        posted = await post_concurrently(shop, events, in_flight=8)

        assert {p.status for p in posted} == {200}
        await wait_until(lambda: len(key_messages(shop.telegram, BUYER)) >= 13, what="13 keys")
        periods = await rows(
            shop,
            select(Order.payment_ref, Order.status).where(Order.subscription_id.is_not(None)),
        )
        assert sorted(periods) == sorted((i, OrderStatus.FULFILLED) for i in invoices)
        first = await scalar(shop, select(Order).where(Order.id == sale.order_id))
        assert (first.status, first.payment_ref) == (OrderStatus.FULFILLED, first_invoice)
        sold = await rows(shop, select(Key.order_id).where(Key.status == KeyStatus.SOLD))
        assert len(sold) == 13 and len(set(sold)) == 13  # one key each, none shared
        delivered = [k for m in key_messages(shop.telegram, BUYER) for k in m.spoiler_texts()]
        assert sorted(delivered) == sorted(keys[:13])
        started = await subscription_row(shop)
        last_end = subscription["items"]["data"][0]["current_period_end"]
        assert started.status == SubscriptionStatus.ACTIVE
        assert started.payment_ref == subscription["id"]
        assert started.current_period_end == datetime.fromtimestamp(last_end, UTC)
        assert "Club: next key on" in text(await reply(shop.telegram, BUYER, "/subscriptions"))


async def test_a_failed_renewal_makes_it_past_due_and_tells_the_buyer_until_it_is_paid(
    launch: Launch, database_url: str
) -> None:
    async with launch(database_url) as shop:
        await stock(shop, SKU, new_keys(3, SKU), name="Club", every="month")
        tg = shop.telegram
        subscription = await subscribed(shop, language="zh")
        unpaid = renewal(shop, subscription, paid=False)
        failed = shop.stripe.invoice_event("invoice.payment_failed", unpaid)

        for event in (failed, failed, shop.stripe.invoice_event("invoice.payment_failed", unpaid)):
            await post_ok(shop, event)

        notice = await tg.wait_for(lambda m: m.chat_id == BUYER and "/subscriptions" in text(m))
        assert PAST_DUE_NOTICE not in text(notice) and "Club" in text(notice)  # in Chinese
        assert (await subscription_row(shop)).status == SubscriptionStatus.PAST_DUE
        assert len(key_messages(tg, BUYER)) == 1
        # Stripe retries for weeks: keyvend does not end it on its own meanwhile.
        await _age_subscription(shop, days=40)
        await jobs.reconcile(shop.parts.shop)
        assert (await subscription_row(shop)).status == SubscriptionStatus.PAST_DUE

        shop.stripe.pay_invoice(unpaid)
        since = time.monotonic()
        await post_ok(shop, shop.stripe.invoice_event("invoice.paid", unpaid))
        await key_message(shop, BUYER, since=since)
        await post_ok(shop, failed)  # the failure again, after the payment it lost to
        assert (await subscription_row(shop)).status == SubscriptionStatus.ACTIVE
        notices = [m for m in tg.messages_to(BUYER) if "/subscriptions" in text(m)]
        assert len(notices) == 1 and len(key_messages(tg, BUYER)) == 2


async def test_stripe_ending_it_tells_the_buyer_and_no_more_keys_come(
    launch: Launch, database_url: str
) -> None:
    async with launch(database_url) as shop:
        await stock(shop, SKU, new_keys(4, SKU), name="Club", every="month")
        tg = shop.telegram
        subscription = await subscribed(shop)
        paid = shop.stripe.invoice_event("invoice.paid", renewal(shop, subscription))
        await post_ok(shop, paid)
        await wait_until(lambda: len(key_messages(tg, BUYER)) == 2, what="the second key")

        shop.stripe.end_subscription(subscription["id"])
        deleted = shop.stripe.subscription_deleted_event(subscription["id"])
        for event in (deleted, deleted, paid):
            await post_ok(shop, event)

        await tg.wait_for(lambda m: m.chat_id == BUYER and "has ended" in text(m))
        ended = await subscription_row(shop)
        assert ended.status == SubscriptionStatus.ENDED and ended.ended_at is not None
        assert "ended" in text(await reply(tg, BUYER, "/subscriptions"))
        assert sum("has ended" in text(m) for m in tg.messages_to(BUYER)) == 1
        assert len(key_messages(tg, BUYER)) == 2
        assert await scalar(shop, select(func.count()).where(Key.status == KeyStatus.SOLD)) == 2


async def test_cancelling_in_subscriptions_asks_stripe_to_stop_at_the_period_end(
    launch: Launch, database_url: str
) -> None:
    async with launch(database_url) as shop:
        await stock(shop, SKU, new_keys(2, SKU), name="Club", every="month")
        tg = shop.telegram
        subscription = await subscribed(shop)
        listing = await reply(tg, BUYER, "/subscriptions")
        since = time.monotonic()
        tg.press(BUYER, listing, listing.button("Cancel")["callback_data"])
        await tg.wait_for(
            lambda m: sent_since(tg, BUYER, since)(m) and "cancelled, runs until" in text(m)
        )

        assert subscription["cancel_at_period_end"] is True
        updates = [r for r in shop.stripe.requests if r.path.startswith("/v1/subscriptions/")]
        assert [(r.method, r.path, r.params, r.status) for r in updates] == [
            (
                "POST",
                f"/v1/subscriptions/{subscription['id']}",
                {"cancel_at_period_end": "true"},
                200,
            )
        ]
        row = await subscription_row(shop)
        assert row.cancel_at_period_end and row.status == SubscriptionStatus.ACTIVE

        # At the period's end Stripe deletes it: that ends it here.
        shop.stripe.end_subscription(subscription["id"])
        await post_ok(shop, shop.stripe.subscription_deleted_event(subscription["id"]))
        await tg.wait_for(lambda m: m.chat_id == BUYER and "has ended" in text(m))
        assert (await subscription_row(shop)).status == SubscriptionStatus.ENDED


async def test_an_invoice_of_an_unknown_or_foreign_subscription_is_ignored(
    launch: Launch, database_url: str
) -> None:
    async with launch(database_url) as shop:
        await stock(shop, SKU, new_keys(3, SKU), name="Club", every="month")
        subscription = await subscribed(shop)
        own = shop.stripe.invoices[renewal(shop, subscription)]
        order_id = subscription["metadata"]["order_id"]
        # Another integration on the same Stripe account: no order named, or our order's id
        # in the metadata of a subscription our checkout did not start.
        strangers = {"subscription": "sub_1OtherIntegration000000", "metadata": {}}
        posing = {"subscription": "sub_1OtherIntegration000000", "metadata": {"order_id": order_id}}
        events = []
        for details in (strangers, posing):
            invoice = {**own, "id": f"in_1Other{len(events)}"}
            invoice["parent"] = {**own["parent"], "subscription_details": details}
            events.append(shop.stripe.event("invoice.paid", invoice))
            events.append(shop.stripe.event("invoice.payment_failed", invoice))
        deleted = {**subscription, "id": posing["subscription"], "status": "canceled"}
        events.append(shop.stripe.event("customer.subscription.deleted", deleted))

        first = await post_concurrently(shop, events)
        again = await post_concurrently(shop, events)

        assert [(p.status, p.outcome) for p in first] == [(200, "ignored")] * 2 + [
            (200, "foreign")
        ] * 3
        assert [p.outcome for p in again] == ["ignored"] * 2 + ["duplicate"] * 3
        assert await scalar(shop, select(func.count()).select_from(Order)) == 1
        assert (await subscription_row(shop)).status == SubscriptionStatus.ACTIVE
        assert len(key_messages(shop.telegram, BUYER)) == 1


async def test_a_renewal_with_no_key_left_is_refunded_through_its_invoice(launch: Launch) -> None:
    async with launch() as shop:
        await stock(shop, SKU, new_keys(1, SKU), name="Club", price="4.99", every="month")
        subscription = await subscribed(shop)
        invoice = renewal(shop, subscription)

        await post_ok(shop, shop.stripe.invoice_event("invoice.paid", invoice))
        renewed = await wait_until(
            lambda: scalar(
                shop,
                select(Order).where(
                    Order.payment_ref == invoice, Order.status == OrderStatus.REFUNDED
                ),
            ),
            what="the renewal to be refunded",
        )

        refunds = list(shop.stripe.refunds.values())
        assert [(r["payment_intent"], r["amount"]) for r in refunds] == [
            (shop.stripe.payment_of_invoice(invoice), 499)
        ]
        assert renewed.subscription_id is not None
        await shop.telegram.wait_for(lambda m: m.chat_id == BUYER and "was refunded" in text(m))


async def _age_subscription(shop: Shop, *, days: int) -> None:
    async def age(session):
        for row in await session.scalars(select(Subscription)):
            row.current_period_end -= timedelta(days=days)

    await shop.db.write(age)
