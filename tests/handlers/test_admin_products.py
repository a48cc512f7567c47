"""Product management from the chat: /products, the product card's edit buttons, /newproduct,
and the buyer's catalogue grouped by category with pages.

The admin taps and types through the real PTB client against FakeTelegram; what changed is
read back from the database (the same rows `keyvend product edit` would have written, with
an audit row per change). A non-admin gets the unknown-command answer and changes nothing.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from store import catalogue
from store.models import AuditEntry, Product
from tests.e2e.conftest import ADMIN, Shop
from tests.e2e.helpers import UNKNOWN_COMMAND, press, reply, rows, scalar, sent_since, stock, text
from tests.fakes.telegram import SentMessage
from tests.support.databases import on_both_databases

BUYER = 3001
STRANGER = 3002
STALE = "This button has expired. Send /start."


async def tap(shop: Shop, user: int, message: SentMessage, data: str) -> SentMessage:
    """Press a button and wait for the bot to redraw that message; the redrawn message."""
    since = time.monotonic()
    await press(shop.telegram, user, message, data)
    return await shop.telegram.wait_for(
        lambda m: (
            m.method == "editMessageText"
            and m.chat_id == message.chat_id
            and m.message_id == message.message_id
            and m.time >= since
        )
    )


async def open_product(shop: Shop, sku: str) -> SentMessage:
    listing = await reply(shop.telegram, ADMIN, "/products", contains="Products")
    return await tap(shop, ADMIN, listing, listing.button(sku)["callback_data"])


async def edit(shop: Shop, card: SentMessage, button: str, value: str) -> str:
    """Press an edit button on a product card, type the value; the bot's answer."""
    since = time.monotonic()
    await press(shop.telegram, ADMIN, card, card.button(button)["callback_data"])
    await shop.telegram.wait_for(
        lambda m: sent_since(shop.telegram, ADMIN, since)(m) and "Send the" in text(m)
    )
    return text(await reply(shop.telegram, ADMIN, value))


async def product_row(shop: Shop, sku: str) -> Product:
    return await scalar(shop, select(Product).where(Product.sku == sku))


async def edits_audited(shop: Shop) -> list[tuple[int, str, str]]:
    return await rows(
        shop,
        select(AuditEntry.admin_id, AuditEntry.action, AuditEntry.detail).order_by(AuditEntry.id),
    )


async def test_products_lists_every_product_with_price_stock_and_state(shop: Shop) -> None:
    await stock(shop, "GAME", 3, price="9.99")
    await stock(shop, "GIFT", 0, price="5.00", currency="eur")
    await catalogue.edit_product(shop.db, "GIFT", catalogue.ProductChanges(active=False))

    listing = await reply(shop.telegram, ADMIN, "/products", contains="Products")

    assert [b["text"] for b in listing.buttons()] == ["GAME · $9.99 · 3", "⏸ GIFT · €5.00 · 0"]


async def test_a_product_card_shows_every_setting(shop: Shop) -> None:
    await stock(shop, "GAME", 2, max_per_buyer=3, low_stock_threshold=1, category="Steam")

    card = text(await open_product(shop, "GAME"))

    assert "Price: $9.99 · kind: unique" in card
    assert "In stock: 2 · low-stock alert at 1" in card
    assert "Limits: 10 per order, 3 per buyer" in card
    assert "Category: Steam" in card
    assert "Allocation: oldest first" in card
    assert "On sale" in card


@pytest.mark.parametrize(
    ("button", "value", "column", "expected"),
    [
        ("Name (English)", "Game Deluxe", "name", "Game Deluxe"),
        ("Name (中文)", "游戏豪华版", "translations", {"zh": {"name": "游戏豪华版"}}),
        ("Description (English)", "Works on PC", "description", "Works on PC"),
        ("Price", "12.50 eur", "price", (1250, "eur")),
        ("Price", "15", "price", (1500, "usd")),
        ("Stars price", "500", "prices", {"stars": {"amount": 500, "currency": "xtr"}}),
        ("Stars price", "0", "prices", {}),
        ("Limits", "4 2", "limits", (4, 2)),
        ("Low-stock alert", "7", "low_stock_threshold", 7),
        ("Template", "Redeem {key} on Steam", "delivery_template", "Redeem {key} on Steam"),
        ("Category", "Steam", "category", "Steam"),
        ("Review thresholds", "5 100.00", "review", (5, 10000)),
        ("Review thresholds", "3", "review", (3, None)),
    ],
)
@on_both_databases
async def test_an_admin_changes_a_product_by_tapping_and_typing(
    shop: Shop, button: str, value: str, column: str, expected: object
) -> None:
    await stock(shop, "GAME", 1, max_per_buyer=5)
    card = await open_product(shop, "GAME")

    answer = await edit(shop, card, button, value)

    assert answer.startswith("Saved."), answer
    product = await product_row(shop, "GAME")
    match column:
        case "price":
            assert (product.price_minor, product.currency) == expected
        case "limits":
            assert (product.max_per_order, product.max_per_buyer) == expected
        case "review":
            assert (product.review_quantity, product.review_amount_minor) == expected
        case _:
            assert getattr(product, column) == expected
    assert (ADMIN, "product.edit", "GAME") in await edits_audited(shop)


async def test_a_bad_value_gets_its_reason_and_changes_nothing_until_cancelled(
    shop: Shop,
) -> None:
    await stock(shop, "GAME", 1)
    card = await open_product(shop, "GAME")

    answer = await edit(shop, card, "Price", "free")
    cancelled = text(await reply(shop.telegram, ADMIN, "/cancel"))
    after = text(await reply(shop.telegram, ADMIN, "3.00"))

    assert "price 'free' is not a number" in answer and "Try again" in answer
    assert cancelled == "Cancelled; nothing was changed."
    assert "catalogue" in after  # an ordinary message again, not a price
    product = await product_row(shop, "GAME")
    assert (product.price_minor, product.currency) == (999, "usd")
    assert not [a for a in await edits_audited(shop) if a[1] == "product.edit"]


@on_both_databases
async def test_pause_resume_and_allocation_are_one_tap_each(shop: Shop) -> None:
    await stock(shop, "GAME", 1)
    card = await open_product(shop, "GAME")

    card = await tap(shop, ADMIN, card, card.button("Pause sales")["callback_data"])
    paused = (await product_row(shop, "GAME")).active
    card = await tap(shop, ADMIN, card, card.button("switch to random")["callback_data"])
    allocation = (await product_row(shop, "GAME")).allocation
    card = await tap(shop, ADMIN, card, card.button("Resume sales")["callback_data"])

    assert paused is False and allocation == "random"
    assert (await product_row(shop, "GAME")).active is True
    assert "Allocation: random" in text(card) and "On sale" in text(card)
    assert [a[1] for a in await edits_audited(shop)].count("product.edit") == 3


async def test_review_thresholds_show_on_the_card_and_auto_replace_is_one_tap(shop: Shop) -> None:
    await stock(shop, "GAME", 1)
    card = await open_product(shop, "GAME")
    assert "Review from: none" in text(card)

    await edit(shop, card, "Review thresholds", "4 50.00")
    card = await open_product(shop, "GAME")
    card = await tap(shop, ADMIN, card, card.button("Auto-replace: turn on")["callback_data"])

    assert "Review from: 4 keys / $50.00" in text(card)
    assert "Reported keys: replaced automatically, once per order" in text(card)
    assert (await product_row(shop, "GAME")).auto_replace is True
    assert card.button("Auto-replace: turn off")


async def test_a_paused_product_is_not_sold(shop: Shop) -> None:
    await stock(shop, "GAME", 1)
    card = await open_product(shop, "GAME")
    await tap(shop, ADMIN, card, card.button("Pause sales")["callback_data"])

    answer = await reply(shop.telegram, BUYER, "/buy GAME")

    assert text(answer) == "This product is no longer on sale."


async def start_draft(shop: Shop, sku: str, name: str, price: str) -> SentMessage:
    """/newproduct through its three questions; the draft with its optional settings."""
    for message in ("/newproduct", sku, name):
        await reply(shop.telegram, ADMIN, message)
    return await reply(shop.telegram, ADMIN, price, contains="Not created yet")


async def set_in_draft(shop: Shop, draft: SentMessage, button: str, value: str) -> SentMessage:
    """Press a typed setting's button on a draft and type the value; the bot's answer."""
    since = time.monotonic()
    await press(shop.telegram, ADMIN, draft, draft.button(button)["callback_data"])
    await shop.telegram.wait_for(
        lambda m: sent_since(shop.telegram, ADMIN, since)(m) and "Send the" in text(m)
    )
    return await reply(shop.telegram, ADMIN, value)


async def test_newproduct_asks_three_things_then_creates_with_the_cli_defaults(
    shop: Shop,
) -> None:
    await stock(shop, "GAME", 0)
    tg = shop.telegram

    assert "Send its SKU" in text(await reply(tg, ADMIN, "/newproduct"))
    assert "SKU must be" in text(await reply(tg, ADMIN, "bad sku!"))
    assert "already exists" in text(await reply(tg, ADMIN, "GAME"))
    assert "name" in text(await reply(tg, ADMIN, "COURSE"))
    assert "price and currency" in text(await reply(tg, ADMIN, "Python course"))
    assert "not a number" in text(await reply(tg, ADMIN, "lots usd"))
    draft = await reply(tg, ADMIN, "19.00 EUR")
    assert "Not created yet" in text(draft)
    assert await scalar(shop, select(func.count()).select_from(Product)) == 1
    created = await tap(shop, ADMIN, draft, draft.button("Create COURSE")["callback_data"])

    assert text(created).startswith("Created COURSE.")
    assert created.button("Stars price")  # the created product's card, to go on editing
    product = await product_row(shop, "COURSE")
    settings = (product.name, product.price_minor, product.currency, product.kind, product.every)
    assert settings == ("Python course", 1900, "eur", "unique", None)
    limits = (product.max_per_order, product.max_per_buyer, product.low_stock_threshold)
    assert limits == (10, None, 5)
    assert (product.prices, product.delivery_template, product.category) == ({}, "", "")
    assert (ADMIN, "product.add", "COURSE") in await edits_audited(shop)


@on_both_databases
async def test_newproduct_optional_settings_cover_every_option_of_product_add(
    shop: Shop,
) -> None:
    draft = await start_draft(shop, "COURSE", "Python course", "19.00 eur")

    draft = await tap(shop, ADMIN, draft, draft.button("switch to shared")["callback_data"])
    draft = await tap(shop, ADMIN, draft, draft.button("Paid: switch to")["callback_data"])
    draft = await tap(shop, ADMIN, draft, draft.button("Paid: switch to")["callback_data"])
    draft = await tap(shop, ADMIN, draft, draft.button("switch to random")["callback_data"])
    for button, value in [
        ("Description", "Twelve lessons"),
        ("Stars price", "900"),
        ("Limits", "3 6"),
        ("Low-stock alert", "2"),
        ("Template", "Password: {key}"),
        ("Category", "Courses"),
    ]:
        draft = await set_in_draft(shop, draft, button, value)
        assert "Not created yet" in text(draft), text(draft)
    shown = text(draft)
    created = await tap(shop, ADMIN, draft, draft.button("Create COURSE")["callback_data"])

    assert "Stars price: 900 Stars · paid: every month" in shown, shown
    assert "Limits: 3 per order, 6 per buyer" in shown
    assert text(created).startswith("Created COURSE.")
    product = await product_row(shop, "COURSE")
    assert (product.kind, product.every, product.allocation) == ("shared", "month", "random")
    assert product.description == "Twelve lessons"
    assert product.prices == {"stars": {"amount": 900, "currency": "xtr"}}
    limits = (product.max_per_order, product.max_per_buyer, product.low_stock_threshold)
    assert limits == (3, 6, 2)
    assert (product.delivery_template, product.category) == ("Password: {key}", "Courses")
    assert [a[1] for a in await edits_audited(shop)] == ["product.add"]


@pytest.mark.parametrize(
    ("button", "value", "reason"),
    [
        ("Limits", "0", "per-order limit must be between 1 and 100"),
        ("Limits", "many", "send one or two whole numbers"),
        ("Stars price", "20000", "from 1 to 10000"),
        ("Template", "Use {code}", "unknown placeholder {code}"),
    ],
)
async def test_a_bad_draft_setting_gets_its_reason_and_the_draft_keeps_its_value(
    shop: Shop, button: str, value: str, reason: str
) -> None:
    draft = await start_draft(shop, "SUB", "Monthly", "5.00 usd")
    draft = await tap(shop, ADMIN, draft, draft.button("Paid: switch to")["callback_data"])
    draft = await tap(shop, ADMIN, draft, draft.button("Paid: switch to")["callback_data"])

    answer = text(await set_in_draft(shop, draft, button, value))
    again = await reply(shop.telegram, ADMIN, "-" if button == "Template" else "4")
    created = await tap(shop, ADMIN, again, again.button("Create SUB")["callback_data"])

    assert reason in answer and "Try again" in answer, answer
    assert text(created).startswith("Created SUB.")
    product = await product_row(shop, "SUB")
    assert product.every == "month"
    assert product.max_per_order == (4 if button == "Limits" else 10)
    assert product.prices == (
        {"stars": {"amount": 4, "currency": "xtr"}} if button == "Stars price" else {}
    )
    assert product.delivery_template == ""


async def test_a_stars_price_too_high_for_a_subscription_keeps_the_draft_one_off(
    shop: Shop,
) -> None:
    draft = await start_draft(shop, "BIG", "Big bundle", "500.00 usd")
    draft = await set_in_draft(shop, draft, "Stars price", "50000")

    answer = await press(
        shop.telegram, ADMIN, draft, draft.button("Paid: switch to")["callback_data"]
    )
    created = await tap(shop, ADMIN, draft, draft.button("Create BIG")["callback_data"])

    assert "from 1 to 10000" in answer.get("text", "")
    assert text(created).startswith("Created BIG.")
    product = await product_row(shop, "BIG")
    assert (product.every, product.prices) == (
        None,
        {"stars": {"amount": 50000, "currency": "xtr"}},
    )


async def test_newproduct_cancelled_creates_nothing(shop: Shop) -> None:
    for message in ("/newproduct", "HALF", "Half done"):
        await reply(shop.telegram, ADMIN, message)

    assert text(await reply(shop.telegram, ADMIN, "/cancel")) == "Cancelled; nothing was changed."
    assert await scalar(shop, select(func.count()).select_from(Product)) == 0


@pytest.mark.parametrize("command", ["/products", "/newproduct"])
async def test_a_non_admin_gets_the_unknown_command_answer(shop: Shop, command: str) -> None:
    await stock(shop, "GAME", 1)

    answer = await reply(shop.telegram, STRANGER, command)
    after = await reply(shop.telegram, STRANGER, "NEWSKU")

    assert text(answer) == UNKNOWN_COMMAND
    assert "catalogue" in text(after)
    assert await scalar(shop, select(func.count()).select_from(Product)) == 1


@pytest.mark.parametrize(
    "data", ["apl", "ap:{id}", "ae:{id}:sale:", "ae:{id}:alloc:", "nd:kind", "nd:create"]
)
async def test_a_non_admin_pressing_a_forged_admin_button_changes_nothing(
    shop: Shop, data: str
) -> None:
    product = await stock(shop, "GAME", 1)

    answer = await press(shop.telegram, STRANGER, 1, data.format(id=product.id))
    typed = await reply(shop.telegram, STRANGER, "0.01")

    assert answer.get("text") == STALE
    assert "catalogue" in text(typed)
    row = await product_row(shop, "GAME")
    assert (row.active, row.allocation, row.price_minor) == (True, "oldest", 999)
    assert [a[1] for a in await edits_audited(shop)] == ["product.add", "keys.import"]


# ---------------------------------------------------------------- the buyer's catalogue


async def test_the_catalogue_groups_products_by_category(shop: Shop) -> None:
    await stock(shop, "STEAM-1", 1, category="Steam")
    await stock(shop, "XBOX-1", 1, category="Xbox")
    await stock(shop, "LOOSE", 1)

    top = await reply(shop.telegram, BUYER, "/start", contains="category")
    steam = await tap(shop, BUYER, top, top.button("Steam")["callback_data"])
    back = await tap(shop, BUYER, steam, steam.button("Categories")["callback_data"])

    assert [b["text"] for b in top.buttons()] == ["Steam (1)", "Xbox (1)", "Other (1)"]
    assert [b["text"] for b in steam.buttons()] == ["STEAM-1 key · $9.99 · 1 left", "« Categories"]
    assert [b["text"] for b in back.buttons()] == [b["text"] for b in top.buttons()]


async def test_a_long_catalogue_is_paged(shop: Shop) -> None:
    for n in range(10):
        await stock(shop, f"P{n:02d}", 1)

    first = await reply(shop.telegram, BUYER, "/start", contains="Pick a product")
    second = await tap(shop, BUYER, first, first.button("›")["callback_data"])

    names = [b["text"].split(" · ")[0] for b in first.buttons()]
    assert names[:8] == [f"P{n:02d} key" for n in range(8)] and names[8:] == ["1/2", "›"]
    assert [b["text"].split(" · ")[0] for b in second.buttons()] == [
        "P08 key",
        "P09 key",
        "‹",
        "2/2",
    ]
