"""Buyer paths through the chat: catalogue, product card, the refusals of a checkout, forged
and garbage buttons, and "my orders" showing keys again.

Every refusal is checked on the database too: a refused checkout leaves no order row and no
reserved key, and a forged button queues nothing for anybody.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time

import pytest
from sqlalchemy import func, select

from handlers.paylinks import LINK_TTL, PayLinks
from store.models import Delivery, DeliveryKind, KeyStatus, OrderStatus, Reveal
from tests.e2e.conftest import ADMIN, Shop, running, shop_settings
from tests.e2e.helpers import (
    checkout,
    key_message,
    key_statuses,
    open_card,
    open_pay_link,
    order_count,
    order_status,
    outbox_empty,
    pay,
    press,
    reply,
    rows,
    scalar,
    sent_since,
    snapshot,
    stock,
    text,
    wait_until,
)

BUYER = 5001
OTHER = 5002
APOLOGY = "Sorry, something went wrong"


def _quantity_buttons(card) -> list[str]:
    return [b["callback_data"] for b in card.buttons() if b["text"] in ("−", "+")]


def _link(shop: Shop, buyer: int, product_id: int, quantity: int = 1, **options) -> str:
    """The pay link a card for this purchase carries (the app's own, as the bot makes it)."""
    return shop.parts.shop.pay_links.url(
        buyer_id=buyer, product_id=product_id, quantity=quantity, language="en", **options
    )


async def _open(shop: Shop, url: str) -> tuple[int, str]:
    """Open a pay link as a browser would: the status, and the Location or the page."""
    async with shop.http.get(url, allow_redirects=False) as response:
        page = await response.text()
    return response.status, response.headers.get("Location") or page


async def _refusal(shop: Shop, buyer: int, product_id: int, quantity: int = 1) -> str:
    """Open a pay link (one a card could carry) and return the reason the buyer is shown."""
    status, page = await _open(shop, _link(shop, buyer, product_id, quantity))
    assert 400 <= status < 500 or status == 503, (status, page)
    return html.unescape(page.split("<p>", 1)[1].split("</p>", 1)[0])


async def test_start_shows_the_catalogue_with_stock(shop: Shop) -> None:
    await stock(shop, "GAME", 3, name="Space Game")
    await stock(shop, "GIFT", 0, name="Gift Card", price="5.00", currency="eur")

    catalogue = await reply(shop.telegram, BUYER, "/start")

    assert text(catalogue) == "Pick a product:"
    assert [b["text"] for b in catalogue.buttons()] == [
        "Space Game · $9.99 · 3 left",
        "Gift Card · €5.00 · sold out",
    ]


async def test_buy_opens_the_card_at_the_quantity_asked(shop: Shop) -> None:
    product = await stock(shop, "GAME", 3)

    card = await open_card(shop, BUYER, "GAME", 2)

    assert "Quantity: 2 — total $19.98" in text(card)
    link = card.button("Pay $19.98 by card")["url"]
    assert link.startswith(f"{shop.url}/pay/")
    assert _read(shop, link)[:3] == (BUYER, product.id, 2)


def _read(shop: Shop, link: str) -> tuple[int, int, int, str, str | None]:
    found = shop.parts.shop.pay_links.read(link.rsplit("/", 1)[1])
    return found.buyer_id, found.product_id, found.quantity, found.language, found.coupon


async def test_the_pay_link_holds_keys_only_once_opened_and_again_leads_to_that_checkout(
    shop: Shop,
) -> None:
    await stock(shop, "GAME", 3)
    card = await open_card(shop, BUYER, "GAME", 2)
    assert await key_statuses(shop, "GAME") == {KeyStatus.AVAILABLE: 3}  # a card holds nothing

    first = await open_pay_link(shop.http, card)
    again = await open_pay_link(shop.http, card)

    assert first.status == 303 and first.session_id is not None
    assert shop.stripe.sessions[first.session_id]["url"].endswith(first.session_id)
    assert again.session_id == first.session_id
    assert await order_count(shop) == 1
    assert await key_statuses(shop, "GAME") == {KeyStatus.RESERVED: 2, KeyStatus.AVAILABLE: 1}
    # The card was the one message before payment: the link answered in the browser.
    assert [m.method for m in shop.telegram.messages_to(BUYER)] == ["sendMessage"]


async def test_taps_on_one_pay_link_at_once_open_one_checkout(shop: Shop) -> None:
    await stock(shop, "GAME", 5)
    card = await open_card(shop, BUYER, "GAME", 2)

    answers = await asyncio.gather(*(open_pay_link(shop.http, card) for _ in range(6)))

    assert {a.status for a in answers} == {303}
    assert len({a.session_id for a in answers}) == 1
    assert await order_count(shop) == 1
    assert await key_statuses(shop, "GAME") == {KeyStatus.RESERVED: 2, KeyStatus.AVAILABLE: 3}


async def test_forged_tampered_and_expired_pay_links_get_a_4xx_and_hold_nothing(
    shop: Shop,
) -> None:
    product = await stock(shop, "GAME", 3)
    good = _link(shop, BUYER, product.id, 1)
    stranger = PayLinks.from_bot_token(shop.url, "999:another-bot-token")
    bad = {
        "another buyer": good.replace(f"/pay/{BUYER}.", f"/pay/{OTHER}."),
        "more keys": good.replace(f".{product.id}.1.", f".{product.id}.3."),
        "another shop's key": stranger.url(
            buyer_id=BUYER, product_id=product.id, quantity=1, language="en"
        ),
        "no signature": good.rsplit(".", 1)[0],
        "garbage": f"{shop.url}/pay/garbage",
        "dots": f"{shop.url}/pay/....",
        "expired": _link(
            shop, BUYER, product.id, 1, now=time.time() - 2 * LINK_TTL.total_seconds()
        ),
    }

    answers = {name: await _open(shop, url) for name, url in bad.items()}

    assert {name: status for name, (status, _) in answers.items()} == {
        **dict.fromkeys(bad, 400),
        "expired": 410,
    }
    assert "This payment link is not valid." in answers["garbage"][1]
    assert "This payment link has expired" in answers["expired"][1]
    assert await order_count(shop) == 0
    assert await key_statuses(shop, "GAME") == {KeyStatus.AVAILABLE: 3}
    # The genuine link still works.
    assert (await _open(shop, good))[0] == 303


async def test_a_blacklisted_buyer_s_pay_link_is_refused(shop: Shop) -> None:
    product = await stock(shop, "GAME", 2)
    await reply(shop.telegram, ADMIN, f"/ban {BUYER}")

    status, page = await _open(shop, _link(shop, BUYER, product.id))

    assert status == 403 and "Sorry, you can&#x27;t buy in this shop." in page
    assert await order_count(shop) == 0


async def test_without_a_public_url_the_card_pays_through_the_chat(
    sqlite_url, telegram, stripe_api, key_secret
) -> None:
    settings = shop_settings(sqlite_url, telegram, stripe_api, key_secret, public_url=None)
    async with running(settings, telegram, stripe_api) as shop:
        await stock(shop, "GAME", 2)
        card = await open_card(shop, BUYER, "GAME")
        since = time.monotonic()
        telegram.press(BUYER, card, card.button("by card")["callback_data"])
        answer = await telegram.wait_for(
            lambda m: sent_since(telegram, BUYER, since)(m) and text(m).startswith("Order #")
        )
        assert answer.button("Pay")["url"].startswith(stripe_api.url)
        assert await key_statuses(shop, "GAME") == {KeyStatus.RESERVED: 1, KeyStatus.AVAILABLE: 1}
        async with shop.http.get(f"{shop.url}/pay/anything") as response:
            assert response.status == 404  # no links made, none opened


async def test_buy_of_an_unknown_product_is_a_one_line_answer(shop: Shop) -> None:
    answer = text(await reply(shop.telegram, BUYER, "/buy NOPE"))

    assert answer == "There is no product NOPE. /start shows the catalogue."
    assert await order_count(shop) == 0


async def test_quantity_is_bounded_by_stock(shop: Shop) -> None:
    product = await stock(shop, "GAME", 3)

    card = await open_card(shop, BUYER, "GAME", 50)

    assert "Quantity: 3 — total $29.97" in text(card)
    assert _quantity_buttons(card) == [f"p:{product.id}:2", f"p:{product.id}:3"]
    refusal = await _refusal(shop, BUYER, product.id, 4)
    assert refusal == "Sorry, only 3 left — please choose a smaller quantity."
    assert await order_count(shop) == 0
    assert await key_statuses(shop, "GAME") == {KeyStatus.AVAILABLE: 3}


async def test_quantity_is_bounded_by_the_per_order_limit(shop: Shop) -> None:
    product = await stock(shop, "GAME", 5, max_per_order=2)

    card = await open_card(shop, BUYER, "GAME", 9)
    one = await open_card(shop, BUYER, "GAME", 1)
    await press(shop.telegram, BUYER, one, f"p:{product.id}:9")  # a forged "+" past the limit

    assert "Quantity: 2 — total $19.98" in text(card)
    assert _quantity_buttons(card) == [f"p:{product.id}:1", f"p:{product.id}:2"]
    # The forged press redraws the card at the most one order may hold.
    assert await wait_until(
        lambda: _button(shop, BUYER, one.message_id, "Pay $19.98 by card"), what="the redraw"
    )
    assert (
        await _refusal(shop, BUYER, product.id, 3) == "You can buy at most 2 of this product now."
    )
    assert await order_count(shop) == 0
    assert await key_statuses(shop, "GAME") == {KeyStatus.AVAILABLE: 5}


async def test_a_sold_out_product_cannot_be_bought(shop: Shop) -> None:
    product = await stock(shop, "GAME", 1)
    await checkout(shop, OTHER, "GAME")  # the only key is reserved by somebody else

    card = await open_card(shop, BUYER, "GAME")

    assert "Sold out" in text(card)
    assert not [b for b in card.buttons() if "Pay" in b["text"]]
    assert await _refusal(shop, BUYER, product.id, 1) == "Sorry, this product just sold out."
    assert await order_count(shop) == 1
    assert await key_statuses(shop, "GAME") == {KeyStatus.RESERVED: 1}


async def test_the_per_buyer_limit_refuses_and_reserves_nothing(shop: Shop) -> None:
    product = await stock(shop, "GAME", 5)
    edited = await shop.cli("product", "edit", "GAME", "--max-per-buyer", "1")
    assert edited.returncode == 0, edited.stderr
    await checkout(shop, BUYER, "GAME")

    refusal = await _refusal(shop, BUYER, product.id, 2)

    assert refusal == "You have already bought as many of this product as the shop allows."
    assert await order_count(shop) == 1
    assert await key_statuses(shop, "GAME") == {KeyStatus.RESERVED: 1, KeyStatus.AVAILABLE: 4}


async def test_a_fourth_unpaid_order_is_refused(shop: Shop) -> None:
    product = await stock(shop, "GAME", 10)
    # Three different purchases (the same one again would lead back to its checkout).
    for quantity in (1, 2, 3):
        await checkout(shop, BUYER, "GAME", quantity)

    refusal = await _refusal(shop, BUYER, product.id, 4)

    assert refusal.startswith("You already have 3 unpaid orders.")
    assert (await snapshot(shop)).orders == {OrderStatus.PENDING: 3}
    assert await key_statuses(shop, "GAME") == {KeyStatus.RESERVED: 6, KeyStatus.AVAILABLE: 4}


@pytest.mark.parametrize("outage", ["5xx", "down"])
async def test_stripe_unreachable_at_checkout_cancels_the_order_and_frees_the_keys(
    shop: Shop,
    outage: str,
) -> None:
    product = await stock(shop, "GAME", 2)
    if outage == "5xx":
        shop.stripe.fail_next(10)
    else:
        shop.stripe.down = True

    try:
        refusal = await _refusal(shop, BUYER, product.id, 2)
    finally:
        shop.stripe.fail_next(0)
        shop.stripe.down = False

    assert refusal.startswith("Card payment is unavailable right now — nothing was charged.")
    assert (await snapshot(shop)).orders == {OrderStatus.CANCELLED: 1}
    assert await key_statuses(shop, "GAME") == {KeyStatus.AVAILABLE: 2}
    # And once Stripe is back, the same buyer can buy the same keys.
    sale = await checkout(shop, BUYER, "GAME", 2)
    assert await order_status(shop, sale.order_id) == OrderStatus.PENDING


async def test_another_buyers_order_cannot_be_opened_or_shown(shop: Shop) -> None:
    await stock(shop, "GAME", 2)
    paid = await checkout(shop, BUYER, "GAME")
    await pay(shop, paid)
    await key_message(shop, BUYER)
    unpaid = await checkout(shop, BUYER, "GAME")
    before = await outbox_empty(shop)

    forged = [
        f"{kind}:{order}" for order in (paid.order_id, unpaid.order_id) for kind in ("o", "k")
    ]
    answers = [await press(shop.telegram, OTHER, 1, data) for data in forged]
    returned = await reply(shop.telegram, OTHER, f"/start paid_{unpaid.order_id}")

    assert [(a.get("text"), a.get("show_alert")) for a in answers] == [
        ("Order not found.", True)
    ] * 4
    assert text(returned) == "Order not found."
    assert await snapshot(shop) == before
    assert not [
        m for m in shop.telegram.messages_to(OTHER) if m.spoiler_texts() or "GAME-KEY" in text(m)
    ]
    # Nothing is queued for the owner either: their keys message went out once.
    assert await scalar(shop, select(func.count()).where(Delivery.kind == DeliveryKind.RESHOW)) == 0


EXPIRED = "This button has expired. Send /start."
PREPARING = "Preparing your checkout…"
# Button data a buyer's client could send, and the toast it must get.
GARBAGE = {
    "p:abc": EXPIRED,
    "pay:1:99999": EXPIRED,
    "x": EXPIRED,
    "o:abc": EXPIRED,
    "k:": EXPIRED,
    "p:1": EXPIRED,
    "p:1:1:1": EXPIRED,
    "p:1:1:lower": EXPIRED,  # codes in buttons are upper case
    "pay:1:1::x": EXPIRED,
    "cc:1": EXPIRED,
    "p:1:1:NOPE": "There is no such code. Check it and try again.",
    "cat:1": EXPIRED,
    "ords:2": EXPIRED,
    "p:999999999:1": "This product is no longer on sale.",
    "o:999999999": "Order not found.",
    "k:999999999": "Order not found.",
    "pay:1:0": PREPARING,  # then a message: that quantity can't be bought
    "pay:999999999:1": PREPARING,  # then a message: not on sale
    "": None,  # no data at all: PTB routes it to the catalogue button
}


async def test_garbage_buttons_get_a_clear_answer_and_break_nothing(
    shop: Shop,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await stock(shop, "GAME", 2)
    caplog.set_level(logging.ERROR)
    catalogue = await reply(shop.telegram, BUYER, "/start")
    since = time.monotonic()

    answers = {
        data: (await press(shop.telegram, BUYER, catalogue, data)).get("text") for data in GARBAGE
    }
    # The buyer can still shop normally afterwards.
    sale = await checkout(shop, BUYER, "GAME")

    assert answers == GARBAGE
    told = [text(m) for m in shop.telegram.sent if sent_since(shop.telegram, BUYER, since)(m)]
    assert "That quantity can't be bought." in told
    assert "This product is no longer on sale." in told
    assert not [m for m in told if APOLOGY in m]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [
        r.getMessage() for r in caplog.records
    ]
    assert (await snapshot(shop)).orders == {OrderStatus.PENDING: 1}
    assert await order_status(shop, sale.order_id) == OrderStatus.PENDING


async def test_orders_show_keys_again_as_a_new_protected_message(shop: Shop) -> None:
    await stock(shop, "GAME", 2)
    sale = await checkout(shop, BUYER, "GAME")
    await pay(shop, sale)
    first = await key_message(shop, BUYER)
    await outbox_empty(shop)

    listing = await reply(shop.telegram, BUYER, "/orders")
    await press(shop.telegram, BUYER, listing, listing.button(f"#{sale.order_id}")["callback_data"])
    # The query is answered first, then the list is replaced by the order's detail.
    show = await wait_until(
        lambda: _button(shop, BUYER, listing.message_id, "Show my keys"), what="the order detail"
    )
    since = time.monotonic()
    answer = await press(shop.telegram, BUYER, listing, show["callback_data"])
    again = await key_message(shop, BUYER, since=since)

    assert answer.get("text") == "Your keys are on their way."
    assert again.message_id != first.message_id
    assert again.spoiler_texts() == first.spoiler_texts() == ["GAME-KEY-000"]
    assert again.protect_content
    reveals = await wait_until(
        lambda: _reveals(shop, sale.order_id), what="the second reveal to be recorded"
    )
    assert reveals == ["keys", "reshow"]


def _button(shop: Shop, chat_id: int, message_id: int, label: str) -> dict | None:
    """A button of a message as it is now (after edits), if it has one with `label`."""
    message = shop.telegram.current_message(chat_id, message_id) or {}
    keyboard = (message.get("reply_markup") or {}).get("inline_keyboard", [])
    return next((b for row in keyboard for b in row if label in b["text"]), None)


async def _reveals(shop: Shop, order_id: int) -> list[str] | None:
    query = select(Reveal.how).where(Reveal.order_id == order_id).order_by(Reveal.id)
    how = [h for (h,) in await rows(shop, query)]
    return how if len(how) >= 2 else None


async def test_keys_of_an_unpaid_order_cannot_be_shown(shop: Shop) -> None:
    await stock(shop, "GAME", 2)
    sale = await checkout(shop, BUYER, "GAME")

    answer = await press(shop.telegram, BUYER, 1, f"k:{sale.order_id}")

    assert (answer.get("text"), answer.get("show_alert")) == (
        "This order has no keys to show.",
        True,
    )
    assert (await snapshot(shop)).deliveries == {}
