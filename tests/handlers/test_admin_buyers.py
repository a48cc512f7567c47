"""Bans, the audit log and the buyer's language, driven through the chat.

The admin and buyers are FakeTelegram users; a ban is proven by the buyer's refused checkout
and by the buyers row, the audit by its rows, a chosen language by the next answers.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from store.models import AuditEntry, Buyer
from tests.e2e.conftest import ADMIN, Shop
from tests.e2e.helpers import (
    UNKNOWN_COMMAND,
    checkout,
    open_pay_link,
    press,
    reply,
    rows,
    scalar,
    stock,
    text,
)
from tests.support.databases import on_both_databases

BUYER = 3001
STRANGER = 3002
REFUSED = "Sorry, you can't buy in this shop."


async def _buyer(shop: Shop, buyer_id: int) -> Buyer | None:
    return await scalar(shop, select(Buyer).where(Buyer.id == buyer_id))


@on_both_databases
async def test_a_banned_buyer_cannot_start_a_checkout_until_unbanned(shop: Shop) -> None:
    await stock(shop, "GAME", 3)
    shop.telegram.message(BUYER, "/start", username="Scammer_1")
    await shop.telegram.wait_for(lambda m: m.chat_id == BUYER and "Pick a product" in text(m))

    banned = await reply(shop.telegram, ADMIN, "/ban @scammer_1 three chargebacks")
    card = await reply(shop.telegram, BUYER, "/buy GAME", contains="Price:")
    refused = await open_pay_link(shop.http, card)
    listing = await reply(shop.telegram, ADMIN, "/banned")
    unbanned = await reply(shop.telegram, ADMIN, f"/unban {BUYER}")
    sale = await checkout(shop, BUYER, "GAME")

    assert text(banned) == f"Buyer {BUYER} (@scammer_1) is banned."
    assert (refused.status, refused.reason) == (403, REFUSED)
    assert f"{BUYER} (@scammer_1) — three chargebacks" in text(listing)
    assert text(unbanned) == f"Buyer {BUYER} (@scammer_1) may buy again."
    assert sale.order_id
    assert (await _buyer(shop, BUYER)).blacklisted is False
    audited = await rows(
        shop,
        select(AuditEntry.admin_id, AuditEntry.action, AuditEntry.detail).order_by(AuditEntry.id),
    )
    assert (ADMIN, "buyer.ban", f"{BUYER} three chargebacks") in audited
    assert (ADMIN, "buyer.unban", f"{BUYER}") in audited


@on_both_databases
async def test_a_buyer_not_seen_yet_can_be_banned_by_id_but_not_by_unknown_username(
    shop: Shop,
) -> None:
    by_id = await reply(shop.telegram, ADMIN, "/ban 999")
    by_name = await reply(shop.telegram, ADMIN, "/ban @nobody_here")
    usage = await reply(shop.telegram, ADMIN, "/unban")

    assert text(by_id) == "Buyer 999 is banned."
    assert (await _buyer(shop, 999)).blacklisted is True
    assert text(by_name) == "no buyer @nobody_here"
    assert text(usage).startswith("Usage: /unban USER")


async def test_audit_shows_the_latest_admin_actions(shop: Shop) -> None:
    await stock(shop, "GAME", 1)
    await reply(shop.telegram, ADMIN, "/ban 999 spam")

    audit = text(await reply(shop.telegram, ADMIN, "/audit"))

    lines = audit.splitlines()
    assert lines[0] == "Latest admin actions (UTC)"
    assert lines[1].endswith(f"· {ADMIN} · buyer.ban 999 spam")
    assert lines[-1].endswith("· cli · product.add GAME")


@pytest.mark.parametrize("command", ["/ban 3001 x", "/unban 3001", "/banned", "/audit"])
async def test_a_non_admin_gets_the_unknown_command_answer(shop: Shop, command: str) -> None:
    await reply(shop.telegram, ADMIN, f"/ban {BUYER} before")

    answer = await reply(shop.telegram, STRANGER, command)

    assert text(answer) == UNKNOWN_COMMAND
    assert (await _buyer(shop, BUYER)).blacklisted is True
    assert (
        await rows(shop, select(AuditEntry.admin_id).where(AuditEntry.admin_id == STRANGER)) == []
    )


async def test_a_buyer_chooses_chinese_and_is_answered_in_it_from_then_on(shop: Shop) -> None:
    await stock(shop, "GAME", 1)

    menu = await reply(shop.telegram, BUYER, "/language")
    await press(shop.telegram, BUYER, menu, menu.button("中文")["callback_data"])
    confirmed = await shop.telegram.wait_for(
        lambda m: m.chat_id == BUYER and m.method == "editMessageText"
    )
    unknown = await reply(shop.telegram, BUYER, "/frobnicate")  # Telegram still says "en"

    assert [b["text"] for b in menu.buttons()] == ["✅ English", "中文"]
    assert text(confirmed) == "从现在起我会用中文和你交流。"
    assert text(unknown) != UNKNOWN_COMMAND and "/help" in text(unknown)
    buyer = await _buyer(shop, BUYER)
    assert (buyer.language, buyer.language_chosen) == ("zh", True)
    await reply(shop.telegram, BUYER, "/start")  # a later visit keeps the choice
    assert (await _buyer(shop, BUYER)).language == "zh"


async def test_a_forged_language_button_changes_nothing(shop: Shop) -> None:
    answer = await press(shop.telegram, BUYER, 1, "lang:xx")

    assert answer.get("text") == "This button has expired. Send /start."
    assert await _buyer(shop, BUYER) is None
