"""Order lookup from the chat: /order, /find by order, buyer, @username and key (by digest),
and the card's buttons — resend keys through the outbox, refund (after a confirmation, once
however many admins confirm at once), ban the buyer."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import func, select

from store.models import AuditEntry, Buyer, Delivery, DeliveryKind, KeyStatus, OrderStatus
from tests.e2e.conftest import ADMIN, Shop
from tests.e2e.helpers import (
    UNKNOWN_COMMAND,
    assert_invariants_hold,
    checkout,
    key_message,
    order_key_statuses,
    order_status,
    outbox_empty,
    pay,
    press,
    reply,
    scalar,
    stock,
    text,
    text_to,
)

BUYER = 3001
STRANGER = 3002


async def _sold(shop: Shop) -> int:
    """GAME sold once to BUYER (who has a username); the order id."""
    await stock(shop, "GAME", ["GAME-AAA-111", "GAME-BBB-222"])
    shop.telegram.message(BUYER, "/start", username="keen_buyer")
    await shop.telegram.wait_for(lambda m: m.chat_id == BUYER and "Pick a product" in text(m))
    sale = await checkout(shop, BUYER, "GAME")
    await pay(shop, sale)
    await key_message(shop, BUYER)
    await outbox_empty(shop)
    return sale.order_id


async def test_order_shows_buyer_items_payments_deliveries_and_reveals_but_no_key(
    shop: Shop,
) -> None:
    order_id = await _sold(shop)

    card = await reply(shop.telegram, ADMIN, f"/order {order_id}", contains="Order #")

    body = text(card)
    assert f"Order #{order_id}" in body and "GAME · GAME key × 1 — $9.99 (stripe)" in body
    assert f"Buyer: {BUYER} @keen_buyer" in body
    assert "checkout.session.completed" in body
    assert "keys · sent · 1" in body
    assert "Keys held: 1" in body
    assert body.endswith(" keys")  # the first delivery's reveal
    assert "GAME-AAA-111" not in body and "GAME-AAA-111" not in str(card.params)
    assert [b["text"] for b in card.buttons()] == ["🔑 Resend keys", "↩️ Refund", "⛔ Ban buyer"]


@pytest.mark.parametrize("query", ["{order}", "#{order}", "{buyer}", "@keen_buyer", "@KEEN_BUYER"])
async def test_find_opens_the_one_matching_order(shop: Shop, query: str) -> None:
    order_id = await _sold(shop)

    card = await reply(
        shop.telegram, ADMIN, "/find " + query.format(order=order_id, buyer=BUYER), contains="#"
    )

    assert text(card).startswith(f"Order #{order_id}")


async def test_find_by_key_uses_the_digest_and_deletes_the_pasted_key(shop: Shop) -> None:
    order_id = await _sold(shop)

    since = time.monotonic()
    update = shop.telegram.message(ADMIN, "/find   GAME-AAA-111  ")
    card = await shop.telegram.wait_for(
        lambda m: m.chat_id == ADMIN and m.time >= since and "Order #" in text(m)
    )
    unsold = await reply(shop.telegram, ADMIN, "/find GAME-BBB-222")
    unknown = await reply(shop.telegram, ADMIN, "/find NO-SUCH-KEY")

    assert text(card).startswith(f"Order #{order_id}")
    assert (ADMIN, update["message"]["message_id"]) in shop.telegram.deleted
    assert text(unsold) == "Nothing found for that key."
    assert text(unknown) == "Nothing found for that key."


async def test_resend_keys_queues_a_delivery_to_the_buyer_and_is_audited(shop: Shop) -> None:
    order_id = await _sold(shop)
    card = await reply(shop.telegram, ADMIN, f"/order {order_id}", contains="Order #")

    since = time.monotonic()
    answer = await press(shop.telegram, ADMIN, card, card.button("Resend")["callback_data"])
    again = await key_message(shop, BUYER, since=since)

    assert answer["text"] == "Keys queued to the buyer's chat."
    assert again.spoiler_texts() == ["GAME-AAA-111"]
    assert not [m for m in shop.telegram.messages_to(ADMIN) if m.spoiler_texts()]
    reshows = select(func.count()).where(Delivery.kind == DeliveryKind.RESHOW)
    assert await scalar(shop, reshows) == 1
    audited = select(AuditEntry.admin_id).where(AuditEntry.action == "order.resend_keys")
    assert await scalar(shop, audited) == ADMIN


async def test_ban_buyer_from_the_order_card(shop: Shop) -> None:
    order_id = await _sold(shop)
    card = await reply(shop.telegram, ADMIN, f"/order {order_id}", contains="Order #")

    answer = await press(shop.telegram, ADMIN, card, card.button("Ban")["callback_data"])

    assert answer["text"] == f"Buyer {BUYER} is banned."
    banned = await scalar(shop, select(Buyer).where(Buyer.id == BUYER))
    assert (banned.blacklisted, banned.ban_reason) == (True, f"order #{order_id}")


async def test_refund_from_the_card_asks_first_then_refunds_once(shop: Shop) -> None:
    order_id = await _sold(shop)
    card = await reply(shop.telegram, ADMIN, f"/order {order_id}", contains="Order #")

    await press(shop.telegram, ADMIN, card, card.button("Refund")["callback_data"])
    question = await text_to(shop, ADMIN, f"Refund order #{order_id}?")
    assert len(shop.stripe.refunds) == 0
    data = question.button("Yes, refund")["callback_data"]
    answers = await asyncio.gather(*(press(shop.telegram, ADMIN, question, data) for _ in range(2)))

    refunded = f"Order #{order_id} is refunded; its keys are revoked and the buyer is told."
    assert refunded in [a["text"] for a in answers]
    assert len(shop.stripe.refunds) == 1
    assert await order_status(shop, order_id) == OrderStatus.REFUNDED
    assert await order_key_statuses(shop, order_id) == [KeyStatus.REVOKED]
    audited = select(func.count()).where(AuditEntry.action == "order.refund")
    assert await scalar(shop, audited) == 1
    notices = select(func.count()).where(Delivery.kind == DeliveryKind.REFUNDED)
    assert await scalar(shop, notices) == 1
    await outbox_empty(shop)
    await assert_invariants_hold(shop)


async def test_an_unknown_order_is_a_one_line_answer(shop: Shop) -> None:
    assert text(await reply(shop.telegram, ADMIN, "/order 999")) == "no order #999"
    assert text(await reply(shop.telegram, ADMIN, "/order x")) == "Usage: /order ORDER_ID"


@pytest.mark.parametrize("command", ["/order {order}", "/find {order}", "/find GAME-AAA-111"])
async def test_a_non_admin_gets_the_unknown_command_answer(shop: Shop, command: str) -> None:
    order_id = await _sold(shop)

    answer = await reply(shop.telegram, STRANGER, command.format(order=order_id))

    assert text(answer) == UNKNOWN_COMMAND
    assert not shop.telegram.deleted


@pytest.mark.parametrize(
    "data", ["ao:{order}", "ar:{order}", "ab:{order}", "af:{order}", "afy:{order}"]
)
async def test_a_non_admin_pressing_order_buttons_changes_nothing(shop: Shop, data: str) -> None:
    order_id = await _sold(shop)

    answer = await press(shop.telegram, STRANGER, 1, data.format(order=order_id))

    assert answer["text"] == "This button has expired. Send /start."
    assert (await scalar(shop, select(Buyer).where(Buyer.id == BUYER))).blacklisted is False
    reshows = select(func.count()).where(Delivery.kind == DeliveryKind.RESHOW)
    assert await scalar(shop, reshows) == 0
    assert await order_status(shop, order_id) == OrderStatus.FULFILLED
    assert len(shop.stripe.refunds) == 0
    assert not [m for m in shop.telegram.messages_to(STRANGER) if "Order #" in text(m)]
