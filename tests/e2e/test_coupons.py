"""Coupons through the running app: `/coupon` in the admin chat, codes on the product card
(`/buy SKU QTY CODE` and the "🏷 Enter a code" button), and discounted sales by card (a real
signed Stripe webhook) and by Telegram Stars (the fake Bot API's payment flow).

The price charged is read from what the fakes were asked for (the Checkout Session's
amount, the invoice's price), the outcome from the database: the order fulfilled (not in
review: its discounted amount is what the payment is checked against), the code's uses
counted once however often the payment is reported, and `keyvend check` passing after.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from store.models import AuditEntry, Coupon, Order, OrderStatus
from tests.e2e.conftest import ADMIN, Afterwards, Shop
from tests.e2e.helpers import (
    UNKNOWN_COMMAND,
    key_message,
    open_card,
    open_pay_link,
    order_count,
    paid,
    post_ok,
    press,
    reply,
    rows,
    scalar,
    sent_since,
    stock,
    text,
    wait_for_status,
    wait_until,
)

BUYER = 8101
STRANGER = 8102


@pytest.fixture(autouse=True)
def _audited(shop: Shop, afterwards: Afterwards) -> None:
    """After each test, `keyvend check` passes on the shop's database and no key leaked."""
    afterwards.uses(shop.settings)


async def _coupons(shop: Shop) -> list[tuple]:
    return [
        tuple(r)
        for r in await rows(
            shop,
            select(Coupon.code, Coupon.active, Coupon.uses, Coupon.held).order_by(Coupon.id),
        )
    ]


async def _audited(shop: Shop) -> list[tuple]:
    query = (
        select(AuditEntry.admin_id, AuditEntry.action, AuditEntry.detail)
        .where(AuditEntry.action.like("coupon.%"))
        .order_by(AuditEntry.id)
    )
    return [tuple(r) for r in await rows(shop, query)]


async def _admin(shop: Shop, command: str) -> str:
    return text(await reply(shop.telegram, ADMIN, command))


async def test_an_admin_adds_lists_and_disables_codes(shop: Shop) -> None:
    await stock(shop, "GAME", 2)

    added = await _admin(shop, "/coupon add save10 --percent 10 --uses 5 --until 2099-12-31")
    fixed = await _admin(shop, "/coupon add TWO --off 2.00 --sku GAME")
    listing = await _admin(shop, "/coupon list")
    disabled = await _admin(shop, "/coupon off Save10")

    assert added == (
        "Code added: SAVE10 −10% · any product · 0/5 used · until 2099-12-31 23:59 UTC · active"
    )
    assert fixed == "Code added: TWO −2.00 USD · GAME · 0 used · active"
    assert listing.splitlines() == [
        "Codes",
        "TWO −2.00 USD · GAME · 0 used · active",
        "SAVE10 −10% · any product · 0/5 used · until 2099-12-31 23:59 UTC · active",
    ]
    assert disabled == "SAVE10 is disabled: no new checkout can use it."
    assert await _coupons(shop) == [("SAVE10", False, 0, 0), ("TWO", True, 0, 0)]
    assert await _audited(shop) == [
        (ADMIN, "coupon.add", "SAVE10 10%"),
        (ADMIN, "coupon.add", "TWO 2.00 USD"),
        (ADMIN, "coupon.disable", "SAVE10"),
    ]


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        ("/coupon add SAVE10 --percent 150", "--percent must be a whole number from 1 to 99"),
        ("/coupon add SAVE10", "give either --percent N or --off AMOUNT"),
        ("/coupon add SAVE10 --off 2.00", "--off without --sku needs --currency (usd, eur, ...)"),
        ("/coupon add SAVE10 --percent 10 --sku NOPE", "no product NOPE"),
        ("/coupon add SAVE10 --percent 10 --uses many", "--uses must be a whole number"),
        ("/coupon add SAVE10 --percent 10 --until 2001-01-01", "--until 2001-01-01 is in the past"),
        ("/coupon add SAVE10 --percent", "--percent needs a value"),
        ("/coupon add SAVE10 --free 1", "unknown option --free"),
        ("/coupon off NOPE", "no code NOPE"),
    ],
    ids=[
        "percent-150",
        "no-discount",
        "off-no-currency",
        "unknown-sku",
        "uses-not-a-number",
        "past-date",
        "missing-value",
        "unknown-option",
        "disable-unknown",
    ],
)
async def test_a_bad_coupon_command_gets_one_line_and_changes_nothing(
    shop: Shop, command: str, answer: str
) -> None:
    await stock(shop, "GAME", 1)

    assert await _admin(shop, command) == answer
    assert await _coupons(shop) == []
    assert await _audited(shop) == []


async def test_coupon_alone_explains_itself(shop: Shop) -> None:
    await stock(shop, "GAME", 1)
    assert (await _admin(shop, "/coupon")).startswith("Usage: /coupon add CODE --percent 10")


async def test_a_non_admin_gets_the_unknown_command_answer_and_nothing_changes(
    shop: Shop,
) -> None:
    await stock(shop, "GAME", 1)
    await _admin(shop, "/coupon add SAVE10 --percent 10")

    answers = [
        text(await reply(shop.telegram, STRANGER, command))
        for command in (
            "/coupon add MINE --percent 90",
            "/coupon list",
            "/coupon off SAVE10",
            "/coupon",
        )
    ]

    assert answers == [UNKNOWN_COMMAND] * 4
    assert await _coupons(shop) == [("SAVE10", True, 0, 0)]
    assert [a for _, a, _ in await _audited(shop)] == ["coupon.add"]


async def test_a_discounted_card_sale_is_charged_the_discount_and_counted_once(
    shop: Shop,
) -> None:
    await stock(shop, "GAME", 3)  # 9.99 usd
    await _admin(shop, "/coupon add TWO --off 2.00 --sku GAME --uses 3")
    tg = shop.telegram

    card = await reply(tg, BUYER, "/buy GAME 2 two", contains="Price:")
    assert "🏷 Code TWO: $17.98 after the discount" in text(card)
    answer = await open_pay_link(shop.http, card)
    assert answer.session_id is not None, f"{answer.status}: {answer.reason}"
    session_id = answer.session_id
    session = shop.stripe.sessions[session_id]
    order_id = int(session["client_reference_id"])

    assert card.button("by card")["text"] == "💳 Pay $17.98 by card"
    assert session["amount_total"] == 1798
    assert await _coupons(shop) == [("TWO", True, 0, 1)]  # held by the open checkout
    event = paid(shop.stripe, session_id)
    for _ in range(3):  # Stripe may deliver an event more than once
        await post_ok(shop, event)
    await post_ok(shop, shop.stripe.completed_event(session_id))  # and under another id

    await key_message(shop, BUYER)
    await wait_for_status(shop, order_id, OrderStatus.FULFILLED)
    order = await scalar(shop, select(Order).where(Order.id == order_id))
    assert (order.amount_minor, order.discount_minor, order.paid_amount_minor) == (1798, 200, 1798)
    assert order.coupon_id is not None
    assert await _coupons(shop) == [("TWO", True, 1, 0)]


async def test_the_enter_a_code_button_takes_the_next_message_as_the_code(shop: Shop) -> None:
    product = await stock(shop, "GAME", 3)
    await _admin(shop, "/coupon add SAVE10 --percent 10")
    tg = shop.telegram
    card = await open_card(shop, BUYER, "GAME", 2)

    await press(tg, BUYER, card, card.button("Enter a code")["callback_data"])
    await wait_until(
        lambda: any("Send the code" in text(m) for m in tg.messages_to(BUYER)),
        what="the prompt for a code",
    )
    with_code = await reply(tg, BUYER, "save10", contains="Price:")

    assert "🏷 Code SAVE10: $17.99 after the discount" in text(with_code)
    plus = next(b for b in with_code.buttons() if b["text"] == "+")
    assert plus["callback_data"] == f"p:{product.id}:3:SAVE10"
    assert await order_count(shop) == 0  # nothing held until the pay link is opened
    # The card's pay link carries the code into the checkout it opens.
    answer = await open_pay_link(shop.http, with_code)
    assert shop.stripe.sessions[answer.session_id]["amount_total"] == 1799
    assert await scalar(shop, select(Coupon.held).where(Coupon.code == "SAVE10")) == 1


async def test_a_code_that_does_not_apply_gets_one_line_and_nothing_changes(
    shop: Shop,
) -> None:
    product = await stock(shop, "GAME", 3)
    await stock(shop, "GIFT", 1)
    await _admin(shop, "/coupon add GIFTONLY --percent 10 --sku GIFT")
    await _admin(shop, "/coupon add GONE --percent 10")
    await _admin(shop, "/coupon off GONE")
    await _admin(shop, "/coupon add ONCE --percent 10 --uses 1")
    await reply(shop.telegram, STRANGER, "/buy GAME 1 ONCE", contains="Price:")
    other = await reply(shop.telegram, STRANGER, "/buy GAME 1 ONCE", contains="Price:")
    assert (await open_pay_link(shop.http, other)).session_id is not None
    await wait_until(
        lambda: scalar(shop, select(Coupon.held).where(Coupon.code == "ONCE")),
        what="the stranger's checkout to hold the code",
    )
    before = await _coupons(shop)

    answers = [
        text(await reply(shop.telegram, BUYER, f"/buy GAME 1 {code}"))
        for code in ("NOPE", "GIFTONLY", "GONE", "ONCE")
    ]
    forged = await press(shop.telegram, BUYER, 1, f"pay:{product.id}:1::NOPE")

    assert answers == [
        "There is no such code. Check it and try again.",
        "That code is not valid for this product.",
        "That code is no longer valid.",
        "That code has been used up.",
    ]
    assert forged["text"] == "Preparing your checkout…"
    await wait_until(
        lambda: any(
            text(m) == "There is no such code. Check it and try again."
            for m in shop.telegram.messages_to(BUYER)[-1:]
        ),
        what="the refusal of the forged button",
    )
    assert await _coupons(shop) == before
    assert await order_count(shop) == 1  # the stranger's


async def test_a_discounted_stars_sale_is_invoiced_and_counted_at_the_discount(
    shop: Shop,
) -> None:
    await stock(shop, "STAR", 3)
    edited = await shop.cli("product", "edit", "STAR", "--stars", "50")
    assert edited.returncode == 0, edited.stderr
    await _admin(shop, "/coupon add STARS15 --percent 15")
    tg = shop.telegram

    card = await reply(tg, BUYER, "/buy STAR 2 STARS15", contains="Price:")
    assert card.button("Stars")["text"] == "⭐ Pay 85 Stars"  # 100 less 15 %
    since = time.monotonic()
    tg.press(BUYER, card, card.button("Stars")["callback_data"])
    invoice = await tg.wait_for(
        lambda m: sent_since(tg, BUYER, since)(m) and m.method == "sendInvoice"
    )
    assert [p["amount"] for p in invoice.params["prices"]] == [85]
    payload = tg.invoices[(BUYER, invoice.message_id)]["payload"]
    # The app records the invoice a moment after Telegram accepted it; no buyer is faster.
    await wait_until(
        lambda: scalar(shop, select(Order.id).where(Order.provider_ref == payload)),
        what="the invoice to be recorded",
    )
    answer = await tg.pay(BUYER, invoice)

    assert answer["ok"] is True, answer  # the pre-checkout check knows the discounted amount
    await key_message(shop, BUYER)
    order = await wait_until(
        lambda: scalar(shop, select(Order).where(Order.status == OrderStatus.FULFILLED)),
        what="the Stars order to be fulfilled",
    )
    assert (order.amount_minor, order.discount_minor, order.currency) == (85, 15, "xtr")
    assert await _coupons(shop) == [("STARS15", True, 1, 0)]


async def test_the_command_line_adds_lists_and_disables_codes_as_the_chat_does(
    shop: Shop,
) -> None:
    await stock(shop, "GAME", 1)

    added = await shop.cli("coupon", "add", "cli5", "--percent", "5", "--uses", "2")
    refused = await shop.cli("coupon", "add", "CLI5", "--percent", "7")
    listed = await shop.cli("coupon", "list")
    disabled = await shop.cli("coupon", "disable", "cli5")

    assert added.returncode == 0, added.stderr
    assert " ".join(added.stdout.split()) == "added code CLI5 -5% any product used 0/2 held 0"
    assert (refused.returncode, refused.stderr) == (1, "keyvend: code CLI5 exists already\n")
    assert " ".join(listed.stdout.split()) == "CLI5 -5% any product used 0/2 held 0"
    assert disabled.stdout == "CLI5 is disabled: no new checkout can use it\n"
    assert await _coupons(shop) == [("CLI5", False, 0, 0)]
    assert await _audited(shop) == [
        (None, "coupon.add", "CLI5 5%"),
        (None, "coupon.disable", "CLI5"),
    ]
