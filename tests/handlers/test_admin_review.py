"""The review queue from the chat: an order over its product's threshold waits, the buyer is
told, the admins are alerted; /review shows it with Approve and Reject; a decision is taken
once, however fast the presses come; a non-admin changes nothing. On SQLite and PostgreSQL:
the decision is a conditional update whose locking differs between the two."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import func, select

from store import catalogue
from store.catalogue import ProductChanges
from store.models import AuditEntry, Delivery, DeliveryKind, Key, KeyStatus, OrderStatus
from tests.e2e.conftest import ADMIN, Shop
from tests.e2e.helpers import (
    UNKNOWN_COMMAND,
    checkout,
    key_message,
    order_key_statuses,
    order_status,
    pay,
    press,
    reply,
    scalar,
    stock,
    text,
    text_to,
    wait_for_status,
)
from tests.support.databases import on_both_databases

pytestmark = on_both_databases

BUYER = 3101
STRANGER = 3102


async def _held(shop: Shop) -> int:
    """BUYER paid for 2 GAME keys, at the product's review quantity; the order id."""
    await stock(shop, "GAME", 5)
    await catalogue.edit_product(shop.db, "GAME", ProductChanges(review_quantity=2))
    sale = await checkout(shop, BUYER, "GAME", 2)
    await pay(shop, sale)
    await wait_for_status(shop, sale.order_id, OrderStatus.REVIEW)
    return sale.order_id


async def test_an_order_at_the_threshold_waits_and_everyone_is_told(shop: Shop) -> None:
    order_id = await _held(shop)

    told = await text_to(shop, BUYER, "checks orders like this one")
    alert = await text_to(shop, ADMIN, "held for review")

    assert f"order #{order_id}" in text(told)
    assert f"Order #{order_id} (GAME)" in text(alert) and "/review" in text(alert)
    assert await order_key_statuses(shop, order_id) == ["reserved", "reserved"]
    assert not [m for m in shop.telegram.messages_to(BUYER) if m.spoiler_texts()]


async def test_approve_from_review_delivers_the_held_keys(shop: Shop) -> None:
    order_id = await _held(shop)

    card = await reply(shop.telegram, ADMIN, "/review", contains="waits for review")
    assert f"Order #{order_id}" in text(card) and "× 2" in text(card)
    assert [b["text"] for b in card.buttons()] == ["✅ Approve", "↩️ Reject and refund"]
    answer = await press(shop.telegram, ADMIN, card, card.button("Approve")["callback_data"])
    keys = await key_message(shop, BUYER)

    assert answer["text"] == f"Order #{order_id} approved: its keys are on their way."
    assert keys.spoiler_texts() == ["GAME-KEY-000", "GAME-KEY-001"]
    assert await order_status(shop, order_id) == OrderStatus.FULFILLED
    audited = select(AuditEntry.admin_id).where(AuditEntry.action == "review.approve")
    assert await scalar(shop, audited) == ADMIN
    empty = await reply(shop.telegram, ADMIN, "/review", contains="Nothing waits")
    assert text(empty) == "Nothing waits for review: no orders, no reported keys."


async def test_reject_refunds_through_stripe_and_tells_the_buyer(shop: Shop) -> None:
    order_id = await _held(shop)
    card = await reply(shop.telegram, ADMIN, "/review", contains="waits for review")

    answer = await press(shop.telegram, ADMIN, card, card.button("Reject")["callback_data"])
    # Refunded through Shop.refund before the answer: nothing left for the refund job.
    assert await order_status(shop, order_id) == OrderStatus.REFUNDED
    told = await text_to(shop, BUYER, "was refunded")

    assert answer["text"] == f"Order #{order_id} rejected and refunded."
    assert f"Order #{order_id}" in text(told)
    assert len(shop.stripe.refunds) == 1
    available = select(func.count()).where(Key.status == KeyStatus.AVAILABLE)
    assert await scalar(shop, available) == 5
    audited = select(AuditEntry.admin_id).where(AuditEntry.action == "review.reject")
    assert await scalar(shop, audited) == ADMIN


@pytest.mark.parametrize("second", ["a", "r"])
async def test_two_presses_at_once_decide_once(shop: Shop, second: str) -> None:
    order_id = await _held(shop)
    card = await reply(shop.telegram, ADMIN, "/review", contains="waits for review")

    answers = await asyncio.gather(
        press(shop.telegram, ADMIN, card, f"rv:r:{order_id}"),
        press(shop.telegram, ADMIN, card, f"rv:{second}:{order_id}"),
    )

    assert sum("decided already" in a["text"] for a in answers) == 1
    decisions = select(func.count()).where(
        AuditEntry.action.in_(("review.approve", "review.reject"))
    )
    assert await scalar(shop, decisions) == 1
    won = next(a["text"] for a in answers if "decided already" not in a["text"])
    if "approved" in won:
        assert await order_status(shop, order_id) == OrderStatus.FULFILLED
        assert len(shop.stripe.refunds) == 0
    else:
        await wait_for_status(shop, order_id, OrderStatus.REFUNDED)
        keys = select(func.count()).where(Delivery.kind == DeliveryKind.KEYS)
        assert await scalar(shop, keys) == 0
        assert len(shop.stripe.refunds) == 1


async def test_a_non_admin_gets_the_unknown_command_and_cannot_decide(shop: Shop) -> None:
    order_id = await _held(shop)

    listed = await reply(shop.telegram, STRANGER, "/review")
    since = time.monotonic()
    answers = [await press(shop.telegram, STRANGER, 1, f"rv:{c}:{order_id}") for c in ("a", "r")]

    assert text(listed) == UNKNOWN_COMMAND
    assert all(a["text"] == "This button has expired. Send /start." for a in answers)
    assert await order_status(shop, order_id) == OrderStatus.REVIEW
    assert await order_key_statuses(shop, order_id) == ["reserved", "reserved"]
    decisions = select(func.count()).where(AuditEntry.action.like("review.%"))
    assert await scalar(shop, decisions) == 0
    assert not [
        m for m in shop.telegram.messages_to(STRANGER) if m.time >= since and "Order #" in text(m)
    ]
