"""A key that does not work, from the chat: the buyer reports it from the key message, the
admins get it with Replace / Refund / Reject and answer once, however many press at once;
a buyer cannot report someone else's key and a non-admin cannot answer. Outcomes are read
from the database; `keyvend check` (I6: imported = available + reserved + sold + revoked)
runs after every decision that moves a key."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select

from store import catalogue
from store.catalogue import ProductChanges
from store.models import (
    AuditEntry,
    Delivery,
    DeliveryKind,
    Key,
    KeyReport,
    KeyReportStatus,
    KeyStatus,
    OrderStatus,
)
from tests.e2e.conftest import ADMIN, Shop, running, shop_settings
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
    rows,
    scalar,
    sent_since,
    stock,
    text,
    text_to,
    wait_for_status,
)
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram, SentMessage

BUYER = 3201
STRANGER = 3202
ADMIN_2 = 4243
KEYS = ["GAME-AAA-111", "GAME-BBB-222", "GAME-CCC-333", "GAME-DDD-444"]


@pytest.fixture
async def two_admins(
    database_url: str, telegram: FakeTelegram, stripe_api: FakeStripe, key_secret: str
) -> AsyncIterator[Shop]:
    """The shop on SQLite and on PostgreSQL, with two admins to press at once."""
    settings = shop_settings(
        database_url, telegram, stripe_api, key_secret, admin_ids=f"{ADMIN},{ADMIN_2}"
    )
    async with running(settings, telegram, stripe_api) as shop:
        yield shop


async def _sold(shop: Shop, quantity: int = 1) -> tuple[int, SentMessage]:
    """`quantity` GAME keys sold to BUYER; the order id and the key message."""
    await stock(shop, "GAME", KEYS)
    sale = await checkout(shop, BUYER, "GAME", quantity)
    await pay(shop, sale)
    message = await key_message(shop, BUYER)
    await outbox_empty(shop)
    return sale.order_id, message


async def _report(shop: Shop, message: SentMessage, button: str = "Report") -> dict:
    """Press a key's report button, then "Already used"; the answer to the second press."""
    tg = shop.telegram
    since = time.monotonic()
    await press(tg, BUYER, message, message.button(button)["callback_data"])
    question = await tg.wait_for(
        lambda m: sent_since(tg, BUYER, since)(m) and "What is wrong" in text(m)
    )
    return await press(tg, BUYER, question, question.button("Already used")["callback_data"])


async def _alert(shop: Shop, admin: int = ADMIN) -> SentMessage:
    return await text_to(shop, admin, "reports a key of order")


async def _sold_key(shop: Shop, order_id: int) -> int:
    return await scalar(shop, select(Key.id).where(Key.order_id == order_id))


async def test_each_key_has_a_report_button_that_carries_only_ids(shop: Shop) -> None:
    order_id, message = await _sold(shop, quantity=2)

    key_ids = [
        r[0]
        for r in await rows(shop, select(Key.id).where(Key.order_id == order_id).order_by(Key.id))
    ]
    buttons = message.buttons()
    assert [b["text"] for b in buttons] == ["⚠️ Key 1", "⚠️ Key 2"]
    assert [b["callback_data"] for b in buttons] == [f"kr:{order_id}:{k}" for k in key_ids]
    assert message.spoiler_texts() == KEYS[:2]
    assert not any(key in str(message.reply_markup) for key in KEYS)


async def test_a_report_is_confirmed_to_the_buyer_and_put_to_the_admins(shop: Shop) -> None:
    order_id, message = await _sold(shop)
    key_id = await _sold_key(shop, order_id)

    await _report(shop, message)
    confirmed = await text_to(shop, BUYER, "Reported (#")
    alert = await _alert(shop)

    assert text(confirmed) == "Reported (#1): the seller will answer here."
    assert f"Buyer {BUYER} reports a key of order #{order_id} (GAME)" in text(alert)
    assert "Already used" in text(alert) and "GAME-AAA-111" not in text(alert)
    assert [b["text"] for b in alert.buttons()] == ["🔁 Replace", "↩️ Refund", "✖️ Reject"]
    filed = await rows(shop, select(KeyReport.key_id, KeyReport.reason, KeyReport.status))
    assert [tuple(r) for r in filed] == [(key_id, "Already used", KeyReportStatus.OPEN)]
    listed = await reply(shop.telegram, ADMIN, "/review", contains="Report #")
    assert f"a key of order #{order_id} does not work" in text(listed)
    assert "Reason: Already used" in text(listed)


async def test_reporting_a_key_three_times_at_once_files_one_report(shop: Shop) -> None:
    _, message = await _sold(shop)
    await press(shop.telegram, BUYER, message, message.button("Report")["callback_data"])
    question = await text_to(shop, BUYER, "What is wrong")
    data = question.button("Not accepted")["callback_data"]

    await asyncio.gather(*(press(shop.telegram, BUYER, question, data) for _ in range(3)))

    assert await scalar(shop, select(func.count()).select_from(KeyReport)) == 1
    assert await scalar(shop, select(KeyReport.reason)) == "Not accepted / invalid"
    again = await text_to(shop, BUYER, "reported already")
    assert text(again) == "This key is reported already; the seller will answer here."


async def test_a_buyer_cannot_report_someone_elses_key(shop: Shop) -> None:
    order_id, _ = await _sold(shop)
    key_id = await _sold_key(shop, order_id)

    answers = [
        await press(shop.telegram, STRANGER, 1, f"kr:{order_id}:{key_id}:used"),
        await press(shop.telegram, STRANGER, 1, f"kr:{order_id}:{key_id + 1}:invalid"),
        await press(shop.telegram, BUYER, 1, f"kr:{order_id}:{key_id + 1}:invalid"),  # unsold
    ]

    assert [a["text"] for a in answers] == ["This key cannot be reported."] * 3
    assert await scalar(shop, select(func.count()).select_from(KeyReport)) == 0
    assert not [m for m in shop.telegram.messages_to(ADMIN) if "reports a key" in text(m)]


async def test_replace_revokes_the_key_and_delivers_a_distinct_new_one(shop: Shop) -> None:
    order_id, message = await _sold(shop)
    old = await _sold_key(shop, order_id)
    await _report(shop, message)
    alert = await _alert(shop)

    since = time.monotonic()
    answer = await press(shop.telegram, ADMIN, alert, alert.button("Replace")["callback_data"])
    again = await key_message(shop, BUYER, since=since)

    assert (
        answer["text"] == "Report #1: the key is revoked and a new one is on its way to the buyer."
    )
    assert again.spoiler_texts() == ["GAME-BBB-222"]
    assert await scalar(shop, select(Key.status).where(Key.id == old)) == KeyStatus.REVOKED
    assert await order_key_statuses(shop, order_id) == [KeyStatus.REVOKED, KeyStatus.SOLD]
    assert await order_status(shop, order_id) == OrderStatus.FULFILLED
    audited = select(AuditEntry.admin_id).where(AuditEntry.action == "key_report.replace")
    assert await scalar(shop, audited) == ADMIN
    await outbox_empty(shop)
    await assert_invariants_hold(shop)


async def test_the_order_card_replaces_a_reported_key(shop: Shop) -> None:
    order_id, message = await _sold(shop)
    await _report(shop, message)
    await _alert(shop)

    card = await reply(shop.telegram, ADMIN, f"/order {order_id}", contains="Order #")
    since = time.monotonic()
    answer = await press(shop.telegram, ADMIN, card, card.button("report #1")["callback_data"])
    again = await key_message(shop, BUYER, since=since)
    after = await reply(shop.telegram, ADMIN, f"/order {order_id}", contains="Order #")

    assert answer["text"].startswith("Report #1: the key is revoked")
    assert again.spoiler_texts() == ["GAME-BBB-222"]
    assert not [b for b in after.buttons() if "report #" in b["text"]]
    await outbox_empty(shop)
    await assert_invariants_hold(shop)


async def test_refund_from_a_report_refunds_once_through_stripe(shop: Shop) -> None:
    order_id, message = await _sold(shop)
    await _report(shop, message)
    alert = await _alert(shop)

    answer = await press(shop.telegram, ADMIN, alert, alert.button("Refund")["callback_data"])
    again = await press(shop.telegram, ADMIN, alert, alert.button("Refund")["callback_data"])
    told = await text_to(shop, BUYER, "was refunded")

    assert answer["text"] == "Report #1: the order is refunded."
    assert again["text"] == "Report #1 was answered already."
    assert f"Order #{order_id}" in text(told)
    assert len(shop.stripe.refunds) == 1
    assert await order_status(shop, order_id) == OrderStatus.REFUNDED
    assert await order_key_statuses(shop, order_id) == [KeyStatus.REVOKED]
    audit = await rows(shop, select(AuditEntry.admin_id, AuditEntry.action))
    assert [tuple(a) for a in audit if "refund" in a[1]] == [(ADMIN, "key_report.refund")]
    await outbox_empty(shop)
    await assert_invariants_hold(shop)


async def test_reject_tells_the_buyer_and_changes_no_key(shop: Shop) -> None:
    order_id, message = await _sold(shop)
    await _report(shop, message)
    alert = await _alert(shop)

    answer = await press(shop.telegram, ADMIN, alert, alert.button("Reject")["callback_data"])
    told = await text_to(shop, BUYER, "found it working")

    assert answer["text"] == "Report #1 rejected; the buyer is told."
    assert f"order #{order_id} (GAME key)" in text(told)
    assert await order_key_statuses(shop, order_id) == [KeyStatus.SOLD]
    assert len(shop.stripe.refunds) == 0
    audited = select(AuditEntry.admin_id).where(AuditEntry.action == "key_report.reject")
    assert await scalar(shop, audited) == ADMIN


async def test_auto_replace_answers_the_first_report_of_an_order_alone(shop: Shop) -> None:
    _, message = await _sold(shop, quantity=2)
    await catalogue.edit_product(shop.db, "GAME", ProductChanges(auto_replace=True))

    since = time.monotonic()
    await _report(shop, message, "Key 1")
    replaced = await key_message(shop, BUYER, since=since)
    await _report(shop, message, "Key 2")
    await _alert(shop)

    assert replaced.spoiler_texts() == ["GAME-BBB-222", "GAME-CCC-333"]
    assert text(await text_to(shop, BUYER, "new key is on its way")).startswith("Sorry")
    statuses = await rows(shop, select(KeyReport.status, KeyReport.decided_by))
    assert [tuple(s) for s in statuses] == [
        (KeyReportStatus.REPLACED, None),
        (KeyReportStatus.OPEN, None),
    ]
    await outbox_empty(shop)
    await assert_invariants_hold(shop)


@pytest.mark.parametrize("second", ["r", "f", "j"])
async def test_two_admins_answering_at_once_decide_once(two_admins: Shop, second: str) -> None:
    shop = two_admins
    order_id, message = await _sold(shop)
    await _report(shop, message)
    alerts = [await _alert(shop, ADMIN), await _alert(shop, ADMIN_2)]

    answers = await asyncio.gather(
        press(shop.telegram, ADMIN, alerts[0], alerts[0].button("Replace")["callback_data"]),
        press(shop.telegram, ADMIN_2, alerts[1], f"kd:{second}:1"),
    )

    assert sum("answered already" in a["text"] for a in answers) == 1, answers
    decisions = select(func.count()).where(AuditEntry.action.like("key_report.%"))
    assert await scalar(shop, decisions) == 1
    status = await scalar(shop, select(KeyReport.status))
    revoked = select(func.count()).where(Key.status == KeyStatus.REVOKED)
    if status == KeyReportStatus.REPLACED:
        assert await scalar(shop, revoked) == 1
        assert await order_key_statuses(shop, order_id) == [KeyStatus.REVOKED, KeyStatus.SOLD]
    elif status == KeyReportStatus.REFUNDED:
        await wait_for_status(shop, order_id, OrderStatus.REFUNDED)
        assert len(shop.stripe.refunds) == 1
    else:
        assert await order_key_statuses(shop, order_id) == [KeyStatus.SOLD]
    assert len(shop.stripe.refunds) == (status == KeyReportStatus.REFUNDED)
    await outbox_empty(shop)
    await assert_invariants_hold(shop)


async def test_a_non_admin_cannot_answer_a_report(shop: Shop) -> None:
    order_id, message = await _sold(shop)
    await _report(shop, message)
    await _alert(shop)

    answers = [await press(shop.telegram, STRANGER, 1, f"kd:{c}:1") for c in "rfj"]
    listed = await reply(shop.telegram, STRANGER, "/review")

    assert all(a["text"] == "This button has expired. Send /start." for a in answers)
    assert text(listed) == UNKNOWN_COMMAND
    assert await scalar(shop, select(KeyReport.status)) == KeyReportStatus.OPEN
    assert await order_key_statuses(shop, order_id) == [KeyStatus.SOLD]
    assert len(shop.stripe.refunds) == 0
    decisions = select(func.count()).where(AuditEntry.action.like("key_report.%"))
    assert await scalar(shop, decisions) == 0
    notices = select(func.count()).where(Delivery.kind == DeliveryKind.REPORT_REJECTED)
    assert await scalar(shop, notices) == 0
