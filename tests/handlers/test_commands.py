"""/help and Telegram's command menu: buyers see buyer commands, admins see theirs too.

Through the real PTB client against the fake Bot API: the /help answers, and the command
lists the running shop registered (per scope and language) at start-up.
"""

from __future__ import annotations

import json

from handlers.commands import ADMIN_COMMANDS, BUYER_COMMANDS
from store import buyers
from tests.e2e.conftest import ADMIN, Shop
from tests.e2e.helpers import reply, text

BUYER = 3101


def _menu(shop: Shop, scope: dict, language: str = "") -> list[str]:
    key = (json.dumps(scope, sort_keys=True), language)
    return [c["command"] for c in shop.telegram._commands.get(key, [])]


async def test_a_buyer_is_shown_buyer_commands_only(shop: Shop) -> None:
    help_text = text(await reply(shop.telegram, BUYER, "/help"))

    assert help_text.splitlines()[0] == "/start — the catalogue"
    assert "/buy SKU [quantity] [code] — buy a product directly" in help_text
    assert "/language — choose your language" in help_text
    assert [line.split()[0] for line in help_text.splitlines()] == [
        f"/{c.name}" for c in BUYER_COMMANDS
    ]


async def test_an_admin_is_shown_every_admin_command_in_their_language(shop: Shop) -> None:
    english = text(await reply(shop.telegram, ADMIN, "/help"))
    await buyers.choose_language(shop.db, ADMIN, "zh")
    chinese = text(await reply(shop.telegram, ADMIN, "/help"))

    admin_part = english.split("Admin:\n")[1].splitlines()
    assert [line.split()[0] for line in admin_part] == [f"/{c.name}" for c in ADMIN_COMMANDS]
    assert "/restock SKU — then paste keys (one per line) or upload a .txt/.csv file" in english
    assert "管理员：" in chinese
    assert "/ban USER [reason] — 禁止买家购买" in chinese


async def test_the_menu_offers_admin_commands_in_admin_chats_only(shop: Shop) -> None:
    buyer_names = [c.name for c in BUYER_COMMANDS]
    admin_names = buyer_names + [c.name for c in ADMIN_COMMANDS]
    admin_chat = {"type": "chat", "chat_id": ADMIN}

    assert _menu(shop, {"type": "default"}) == buyer_names
    assert _menu(shop, {"type": "default"}, "zh") == buyer_names
    assert _menu(shop, admin_chat) == admin_names
    assert _menu(shop, admin_chat, "zh") == admin_names
    zh = shop.telegram._commands[(json.dumps(admin_chat, sort_keys=True), "zh")]
    assert {"command": "audit", "description": "最近的管理操作"} in zh
