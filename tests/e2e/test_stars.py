"""Telegram Stars through the running app: the real PTB client against the fake Bot API.

A buyer presses "⭐ Pay N Stars" on the product card, gets an XTR invoice in the chat, and
pays it in the fake (pre-checkout query, then successful_payment): one key arrives, however
many times Telegram repeats the payment. Telegram's question before charging is declined,
with a reason the buyer reads, for an order that expired, lost its keys or is someone
else's. A payment whose update was lost is found in getStarTransactions by reconciliation.
`/refund` returns a Stars or a card payment through the order's own provider, revokes its
keys, tells the buyer, and is idempotent and audited. Outcomes are read from the database.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from bot import jobs
from store.models import (
    AuditEntry,
    Delivery,
    DeliveryKind,
    Key,
    KeyStatus,
    Order,
    OrderStatus,
    Subscription,
)
from store.models import PaymentEvent as Ledger
from tests.e2e.conftest import ADMIN, Launch, Shop
from tests.e2e.helpers import (
    checkout,
    key_message,
    key_messages,
    new_keys,
    open_card,
    order_key_statuses,
    order_status,
    pay,
    press,
    reply,
    rows,
    scalar,
    sent_since,
    stock,
    text,
    text_to,
    wait_for_status,
    wait_until,
)
from tests.fakes.telegram import SentMessage

pytestmark = pytest.mark.usefixtures("afterwards")

BUYER = 7001
OTHER = 7002
SKU = "STAR"
PRICE = 50  # Stars per key


async def stars_product(shop: Shop, count: int = 3, *, price: int = PRICE) -> list[str]:
    """A product sold for cards and for Stars, its Stars price set through the real CLI; its
    keys, in the order they are sold."""
    keys = new_keys(count, SKU)
    await stock(shop, SKU, keys)
    edited = await shop.cli("product", "edit", SKU, "--stars", str(price))
    assert edited.returncode == 0, edited.stderr
    assert f"or {price} Stars" in edited.stdout
    return keys


async def invoice_for(shop: Shop, buyer: int, quantity: int = 1) -> tuple[SentMessage, int]:
    """Press "Pay N Stars" on the card: the invoice the bot sends, and its order."""
    tg = shop.telegram
    card = await open_card(shop, buyer, SKU, quantity)
    since = time.monotonic()
    tg.press(buyer, card, card.button("Stars")["callback_data"])
    invoice = await tg.wait_for(
        lambda m: sent_since(tg, buyer, since)(m) and m.method == "sendInvoice"
    )
    payload = tg.invoices[(buyer, invoice.message_id)]["payload"]
    # The app records the invoice a moment after Telegram accepted it; no buyer is faster.
    order_id = await wait_until(
        lambda: scalar(shop, select(Order.id).where(Order.provider_ref == payload)),
        what="the invoice to be recorded",
    )
    return invoice, order_id


async def ledger(shop: Shop) -> list[tuple[str, str]]:
    return [tuple(r) for r in await rows(shop, select(Ledger.provider, Ledger.event_id))]


async def test_a_stars_purchase_end_to_end(launch: Launch, database_url: str) -> None:
    async with launch(database_url) as shop:
        keys = await stars_product(shop)
        tg = shop.telegram
        card = await open_card(shop, BUYER, SKU, 2)
        labels = [b["text"] for b in card.buttons()]
        assert "💳 Pay $19.98 by card" in labels and "⭐ Pay 100 Stars" in labels

        invoice, order_id = await invoice_for(shop, BUYER, 2)
        params = invoice.params
        assert params["currency"] == "XTR" and not params.get("provider_token")
        assert [p["amount"] for p in params["prices"]] == [100]
        payload = tg.invoices[(BUYER, invoice.message_id)]["payload"]
        assert payload.startswith(f"{order_id}:") and len(payload) > len(f"{order_id}:") + 10
        assert await order_key_statuses(shop, order_id) == [KeyStatus.RESERVED] * 2

        answer = await tg.pay(BUYER, invoice)

        assert answer["ok"] is True
        delivered = await key_message(shop, BUYER)
        assert delivered.spoiler_texts() == keys[:2]
        assert await order_status(shop, order_id) == OrderStatus.FULFILLED
        assert await order_key_statuses(shop, order_id) == [KeyStatus.SOLD] * 2
        paid = (
            await rows(
                shop,
                select(Order.paid_amount_minor, Order.paid_currency, Order.payment_ref).where(
                    Order.id == order_id
                ),
            )
        )[0]
        assert tuple(paid) == (100, "xtr", f"{BUYER}:{answer['charge_id']}")
        assert await ledger(shop) == [("stars", answer["charge_id"])]


async def test_successful_payment_five_times_gives_one_key(
    launch: Launch, database_url: str
) -> None:
    async with launch(database_url) as shop:
        await stars_product(shop)
        tg = shop.telegram
        invoice, order_id = await invoice_for(shop, BUYER)
        answer = await tg.pay(BUYER, invoice)
        await key_message(shop, BUYER)

        for _ in range(4):  # Telegram redelivers the same payment message
            tg.successful_payment(
                BUYER,
                tg.invoices[(BUYER, invoice.message_id)]["payload"],
                PRICE,
                charge_id=answer["charge_id"],
            )
        await wait_until(lambda: tg.updates_pending() == 0, what="the repeats to be taken")
        await asyncio.sleep(0.5)

        assert len(key_messages(tg, BUYER)) == 1
        assert await ledger(shop) == [("stars", answer["charge_id"])]
        assert await scalar(shop, select(func.count()).where(Delivery.order_id == order_id)) == 1
        assert await scalar(shop, select(func.count()).where(Key.status == KeyStatus.SOLD)) == 1


async def test_pre_checkout_is_declined_for_an_expired_order(launch: Launch) -> None:
    async with launch() as shop:
        await stars_product(shop)
        invoice, order_id = await invoice_for(shop, BUYER)

        async def lapse(session):
            order = await session.get(Order, order_id)
            order.reserved_until -= timedelta(hours=1)

        await shop.db.write(lapse)
        answer = await shop.telegram.pay(BUYER, invoice)

        assert answer["ok"] is False and "expired" in answer["error_message"]
        assert "charge_id" not in answer
        assert await order_status(shop, order_id) == OrderStatus.PENDING
        assert await ledger(shop) == []


async def test_pre_checkout_is_declined_once_the_keys_are_gone(
    launch: Launch, database_url: str
) -> None:
    async with launch(database_url) as shop:
        await stars_product(shop, 1)
        invoice, order_id = await invoice_for(shop, BUYER)

        # The order no longer holds its key (it went to someone else meanwhile).
        async def lose_key(session):
            await session.execute(
                update(Key)
                .where(Key.order_id == order_id)
                .values(status=KeyStatus.AVAILABLE, order_id=None)
            )

        await shop.db.write(lose_key)
        answer = await shop.telegram.pay(BUYER, invoice)

        assert (
            answer["ok"] is False
            and answer["error_message"] == "Sorry, this product just sold out."
        )
        assert await ledger(shop) == []
        assert key_messages(shop.telegram, BUYER) == []


async def test_pre_checkout_is_declined_for_someone_elses_order(launch: Launch) -> None:
    async with launch() as shop:
        await stars_product(shop)
        invoice, order_id = await invoice_for(shop, BUYER)

        answer = await shop.telegram.pay(OTHER, invoice, language_code="zh")

        assert answer["ok"] is False and answer["error_message"]
        assert await order_status(shop, order_id) == OrderStatus.PENDING


async def test_a_payment_whose_update_was_lost_is_found_by_reconciliation(
    launch: Launch, database_url: str
) -> None:
    async with launch(database_url) as shop:
        keys = await stars_product(shop)
        invoice, order_id = await invoice_for(shop, BUYER)

        # The money moves, but the successful_payment update is never applied.
        answer = await shop.telegram.pay(BUYER, invoice, lose_update=True)
        assert answer["ok"] is True
        await asyncio.sleep(0.5)
        assert await order_status(shop, order_id) == OrderStatus.PENDING

        await jobs.reconcile(shop.parts.shop)

        assert await order_status(shop, order_id) == OrderStatus.FULFILLED
        assert (await key_message(shop, BUYER)).spoiler_texts() == keys[:1]
        assert await ledger(shop) == [("stars", answer["charge_id"])]
        # Another pass finds nothing more to do.
        assert await jobs.reconcile(shop.parts.shop) == []


async def test_a_second_charge_for_a_paid_order_goes_back(launch: Launch) -> None:
    async with launch() as shop:
        await stars_product(shop)
        tg = shop.telegram
        invoice, order_id = await invoice_for(shop, BUYER)
        first = await tg.pay(BUYER, invoice)
        await key_message(shop, BUYER)

        # A second tap was approved before the first charge landed: Telegram charges twice.
        payload = tg.invoices[(BUYER, invoice.message_id)]["payload"]
        second = tg.charge(BUYER, payload, PRICE)

        await wait_until(lambda: tg.refunded_star_payments, what="the second charge's refund")
        assert [r["telegram_payment_charge_id"] for r in tg.refunded_star_payments] == [second]
        assert second != first["charge_id"]
        assert len(key_messages(tg, BUYER)) == 1
        assert await order_status(shop, order_id) == OrderStatus.FULFILLED


async def test_refund_of_a_stars_order(launch: Launch, database_url: str) -> None:
    async with launch(database_url) as shop:
        await stars_product(shop)
        tg = shop.telegram
        invoice, order_id = await invoice_for(shop, BUYER)
        charge = (await tg.pay(BUYER, invoice))["charge_id"]
        await key_message(shop, BUYER)

        answer = await reply(tg, ADMIN, f"/refund {order_id}")

        assert f"Order #{order_id} is refunded" in text(answer)
        assert [
            (r["user_id"], r["telegram_payment_charge_id"]) for r in tg.refunded_star_payments
        ] == [(BUYER, charge)]
        assert await order_status(shop, order_id) == OrderStatus.REFUNDED
        assert await order_key_statuses(shop, order_id) == [KeyStatus.REVOKED]
        notice = await tg.wait_for(lambda m: m.chat_id == BUYER and "was refunded" in text(m))
        assert f"Order #{order_id}" in text(notice)
        assert (
            await scalar(
                shop,
                select(func.count()).where(
                    Delivery.order_id == order_id, Delivery.kind == DeliveryKind.REFUNDED
                ),
            )
            == 1
        )

        again = await reply(tg, ADMIN, f"/refund {order_id}")

        assert "refunded already" in text(again)
        assert len(tg.refunded_star_payments) == 1
        audit = await rows(shop, select(AuditEntry.admin_id, AuditEntry.action, AuditEntry.detail))
        assert [tuple(a) for a in audit if a[1] == "order.refund"] == [
            (ADMIN, "order.refund", str(order_id))
        ]


async def test_a_reported_stars_key_refunded_by_two_admins_at_once_returns_the_stars_once(
    launch: Launch, database_url: str
) -> None:
    async with launch(database_url) as shop:
        await stars_product(shop)
        tg = shop.telegram
        invoice, order_id = await invoice_for(shop, BUYER)
        charge = (await tg.pay(BUYER, invoice))["charge_id"]
        message = await key_message(shop, BUYER)
        await press(tg, BUYER, message, message.button("Report")["callback_data"])
        question = await text_to(shop, BUYER, "What is wrong")
        await press(tg, BUYER, question, question.button("Not accepted")["callback_data"])
        alert = await text_to(shop, ADMIN, "reports a key of order")

        data = alert.button("Refund")["callback_data"]
        answers = await asyncio.gather(press(tg, ADMIN, alert, data), press(tg, ADMIN, alert, data))

        assert sorted(a["text"] for a in answers) == [
            "Report #1 was answered already.",
            "Report #1: the order is refunded.",
        ]
        assert [
            (r["user_id"], r["telegram_payment_charge_id"]) for r in tg.refunded_star_payments
        ] == [(BUYER, charge)]
        assert await order_status(shop, order_id) == OrderStatus.REFUNDED
        assert await order_key_statuses(shop, order_id) == [KeyStatus.REVOKED]
        await tg.wait_for(lambda m: m.chat_id == BUYER and "was refunded" in text(m))


async def test_refund_of_a_card_order(launch: Launch, database_url: str) -> None:
    async with launch(database_url) as shop:
        await stock(shop, "CARD", new_keys(2, "CARD"))
        sale = await checkout(shop, BUYER, "CARD")
        await pay(shop, sale)
        await wait_for_status(shop, sale.order_id, OrderStatus.FULFILLED)

        answer = await reply(shop.telegram, ADMIN, f"/refund {sale.order_id}")

        assert f"Order #{sale.order_id} is refunded" in text(answer)
        refunds = [r for r in shop.stripe.refunds.values()]
        assert len(refunds) == 1 and refunds[0]["amount"] == 999
        assert await order_status(shop, sale.order_id) == OrderStatus.REFUNDED
        assert await order_key_statuses(shop, sale.order_id) == [KeyStatus.REVOKED]
        await shop.telegram.wait_for(lambda m: m.chat_id == BUYER and "was refunded" in text(m))
        assert "refunded already" in text(
            await reply(shop.telegram, ADMIN, f"/refund {sale.order_id}")
        )
        assert len(shop.stripe.refunds) == 1


async def test_refund_is_an_admin_command(launch: Launch) -> None:
    async with launch() as shop:
        await stock(shop, "CARD", new_keys(1, "CARD"))
        answer = await reply(shop.telegram, BUYER, "/refund 1")
        assert "don't know that command" in text(answer)


async def test_paysupport_and_terms_answer_in_the_buyers_language(launch: Launch) -> None:
    async with launch(paysupport_text="Mail help@example.com") as shop:
        await stock(shop, "CARD", new_keys(1, "CARD"))
        tg = shop.telegram
        assert text(await reply(tg, BUYER, "/paysupport")) == "Mail help@example.com"
        since = time.monotonic()
        tg.message(BUYER, "/terms", language_code="zh")
        terms = await tg.wait_for(sent_since(tg, BUYER, since))
        assert "/paysupport" in text(terms) and "Terms" not in text(terms)


async def test_stars_can_be_turned_off(launch: Launch) -> None:
    async with launch(payment_providers="stripe") as shop:
        await stars_product(shop)
        card = await open_card(shop, BUYER, SKU)
        assert [b["text"] for b in card.buttons() if "Pay" in b["text"]] == ["💳 Pay $9.99 by card"]
        # A forged Stars button is refused like any unknown provider's.
        since = time.monotonic()
        shop.telegram.press(
            BUYER, card, f"pay:{card.buttons()[0]['callback_data'].split(':')[1]}:1:stars"
        )
        answer = await wait_until(
            lambda: [a for a in shop.telegram.callback_answers if a.get("text")],
            what="the refusal",
        )
        assert "not set up" in answer[-1]["text"]
        assert await scalar(shop, select(func.count()).select_from(Order)) == 0
        assert since


async def test_a_payment_for_an_order_that_can_no_longer_be_filled_is_refunded(
    launch: Launch,
) -> None:
    async with launch() as shop:
        await stars_product(shop, 1)
        tg = shop.telegram
        invoice, order_id = await invoice_for(shop, BUYER)

        # The order lapses unpaid and its only key goes to another buyer...
        async def lapse(session):
            order = await session.get(Order, order_id)
            order.reserved_until -= timedelta(hours=2)
            order.check_after -= timedelta(hours=2)

        await shop.db.write(lapse)
        await jobs.reconcile(shop.parts.shop)
        assert await order_status(shop, order_id) == OrderStatus.EXPIRED
        sale = await checkout(shop, OTHER, SKU)
        await pay(shop, sale)
        await wait_for_status(shop, sale.order_id, OrderStatus.FULFILLED)

        # ...then a payment approved just before the lapse lands: nothing is left to give.
        payload = tg.invoices[(BUYER, invoice.message_id)]["payload"]
        charge = tg.charge(BUYER, payload, PRICE)

        await wait_until(lambda: tg.refunded_star_payments, what="the Stars refund")
        assert [
            (r["user_id"], r["telegram_payment_charge_id"]) for r in tg.refunded_star_payments
        ] == [(BUYER, charge)]
        await wait_for_status(shop, order_id, OrderStatus.REFUNDED)
        await tg.wait_for(lambda m: m.chat_id == BUYER and "was refunded" in text(m))
        assert key_messages(tg, BUYER) == []


# ---------------------------------------------------------------- subscriptions

MONTHLY = "CLUB"


async def subscribe(shop: Shop, buyer: int) -> tuple[str, int]:
    """Press "Subscribe" on the card of a monthly Stars product: its invoice link, and order."""
    tg = shop.telegram
    card = await reply(tg, buyer, f"/buy {MONTHLY}", contains="Price:")
    offers = [b["text"] for b in card.buttons() if "Subscribe" in b["text"] or "Pay" in b["text"]]
    assert len(offers) == 2 and offers[0].startswith("🔁 Subscribe: $")  # by card, first
    assert offers[1] == "🔁 Subscribe: 100 Stars a month"
    since = time.monotonic()
    tg.press(buyer, card, card.button("Stars a month")["callback_data"])
    answer = await tg.wait_for(
        lambda m: sent_since(tg, buyer, since)(m) and text(m).startswith("Order #")
    )
    link = answer.buttons()[0]["url"]
    assert tg.invoices[link]["subscription_period"] == 2592000
    assert tg.invoices[link]["total_amount"] == 100
    order_id = await wait_until(
        lambda: scalar(
            shop, select(Order.id).where(Order.provider_ref == tg.invoices[link]["payload"])
        ),
        what="the subscription checkout to be recorded",
    )
    return link, order_id


async def test_a_stars_subscription_renewed_twice_gives_two_more_keys(
    launch: Launch, database_url: str
) -> None:
    async with launch(database_url) as shop:
        keys = new_keys(4, MONTHLY)
        added = await shop.cli(
            "product",
            "add",
            MONTHLY,
            "--name",
            "Club",
            "--price",
            "4.99",
            "--currency",
            "usd",
            "--stars",
            "100",
            "--every",
            "month",
        )
        assert added.returncode == 0, added.stderr
        await stock(shop, "FILLER", new_keys(1, "FILLER"))
        imported = await shop.cli("keys", "import", MONTHLY, "-", stdin="\n".join(keys).encode())
        assert imported.returncode == 0, imported.stderr
        tg = shop.telegram
        link, first_order = await subscribe(shop, BUYER)

        first = await tg.pay(BUYER, link)
        assert first["ok"] is True
        await key_message(shop, BUYER)
        second = tg.renew(BUYER, first["charge_id"])
        third = tg.renew(BUYER, first["charge_id"])
        # Telegram repeats the second period's update; reconciliation reads all three again.
        payload = tg.invoices[link]["payload"]
        tg.successful_payment(BUYER, payload, 100, charge_id=second)
        await wait_until(lambda: len(key_messages(tg, BUYER)) >= 3, what="three key messages")
        await jobs.reconcile(shop.parts.shop)
        await asyncio.sleep(0.5)

        delivered = [m.spoiler_texts() for m in key_messages(tg, BUYER)]
        assert sorted(k for ks in delivered for k in ks) == sorted(keys[:3])
        assert len(delivered) == 3
        assert sorted(await ledger(shop)) == sorted(
            [("stars", first["charge_id"]), ("stars", second), ("stars", third)]
        )
        renewals = await rows(
            shop,
            select(Order.status, Order.payment_ref).where(Order.subscription_id.is_not(None)),
        )
        assert sorted(tuple(r) for r in renewals) == sorted(
            [
                (OrderStatus.FULFILLED, f"{BUYER}:{second}"),
                (OrderStatus.FULFILLED, f"{BUYER}:{third}"),
            ]
        )
        assert await order_status(shop, first_order) == OrderStatus.FULFILLED
        assert tg.refunded_star_payments == []

        listing = await reply(tg, BUYER, "/subscriptions")
        assert "Club: next key on" in text(listing)
        since = time.monotonic()
        tg.press(BUYER, listing, listing.button("Cancel")["callback_data"])
        await tg.wait_for(
            lambda m: sent_since(tg, BUYER, since)(m) and "cancelled, runs until" in text(m)
        )
        assert [
            (e["user_id"], e["telegram_payment_charge_id"], e["is_canceled"])
            for e in tg.subscription_edits
        ] == [(BUYER, first["charge_id"], True)]


async def test_a_stars_subscription_not_renewed_ends_and_the_buyer_is_told(
    launch: Launch,
) -> None:
    async with launch() as shop:
        await stock(
            shop,
            MONTHLY,
            new_keys(2, MONTHLY),
            name="Club",
            every="month",
            prices={"stars": (100, "xtr")},
        )
        tg = shop.telegram
        link, _ = await subscribe(shop, BUYER)
        await tg.pay(BUYER, link)
        await key_message(shop, BUYER)

        async def lapse(session):
            for subscription in await session.scalars(select(Subscription)):
                subscription.current_period_end -= timedelta(days=40)

        await shop.db.write(lapse)
        await jobs.reconcile(shop.parts.shop)

        await tg.wait_for(lambda m: m.chat_id == BUYER and "has ended" in text(m))
        assert "ended" in text(await reply(tg, BUYER, "/subscriptions"))
        assert len(key_messages(tg, BUYER)) == 1


async def test_admins_hear_once_when_stock_will_not_cover_the_renewals_due(
    launch: Launch,
) -> None:
    async with launch() as shop:
        refused = await shop.cli(
            "product",
            "add",
            "BIG",
            "--name",
            "Big",
            "--price",
            "1",
            "--currency",
            "usd",
            "--stars",
            "20000",
            "--every",
            "month",
        )
        assert refused.returncode == 1 and "from 1 to 10000" in refused.stderr
        await stock(
            shop,
            MONTHLY,
            new_keys(1, MONTHLY),
            name="Club",
            every="month",
            prices={"stars": (100, "xtr")},
        )
        tg = shop.telegram
        link, _ = await subscribe(shop, BUYER)
        await tg.pay(BUYER, link)
        await key_message(shop, BUYER)  # the last key went to the first period

        async def renewal_in_two_days(session):
            for subscription in await session.scalars(select(Subscription)):
                subscription.current_period_end -= timedelta(days=28)

        await shop.db.write(renewal_in_two_days)
        await jobs.reconcile(shop.parts.shop)
        await jobs.reconcile(shop.parts.shop)

        warning = "Restock CLUB: 1 subscriptions renew within 3 days and 0 keys are available."
        await tg.wait_for(lambda m: m.chat_id == ADMIN and warning in text(m))
        await asyncio.sleep(0.3)
        assert sum(warning in text(m) for m in tg.messages_to(ADMIN)) == 1
