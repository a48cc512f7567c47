"""/help and Telegram's command menu: buyers see buyer commands, admins see theirs too; and
every admin command, typed by anyone else, is an unknown command that changes nothing.

Through the real PTB client against the fake Bot API: the /help answers, the command lists
the running shop registered (per scope and language) at start-up, and every row of every
table before and after a stranger tries each admin command.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from handlers.commands import ADMIN_COMMANDS, BUYER_COMMANDS
from store import buyers
from store.models import Base
from tests.e2e.conftest import ADMIN, Shop
from tests.e2e.helpers import (
    UNKNOWN_COMMAND,
    checkout,
    key_message,
    outbox_empty,
    pay,
    reply,
    stock,
    text,
)

BUYER = 3101
BANNED = 3102
STRANGER = 3103
# What a stranger types after each admin command: arguments that would act on the sold order
# and the buyers, and, on the next line, what a conversation the command opened would take in.
ARGUMENTS = {
    "restock": "GAME",
    "stats": "GAME",
    "export": "2020-01-01",
    "order": "{order}",
    "find": "{order}",
    "confirm": "{order}",
    "refund": "{order}",
    "ban": f"{BUYER} spam",
    "unban": str(BANNED),
    "client": "add Acme --balance 100.00",
}
FOLLOW_UP = "STOLEN-KEY-1"


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


async def every_row(shop: Shop) -> dict[str, list[Any]]:
    """Every row of every table, but the stranger's own buyer row (when they were last seen
    is theirs to change)."""

    async def work(session) -> dict[str, list[Any]]:
        found = {}
        for table in Base.metadata.sorted_tables:
            query = select(table)
            if table.name == "buyers":
                query = query.where(table.c.id != STRANGER)
            found[table.name] = sorted((tuple(r) for r in await session.execute(query)), key=repr)
        return found

    return await shop.db.read(work)


@pytest.mark.parametrize("command", [c.name for c in ADMIN_COMMANDS])
async def test_every_admin_command_is_unknown_to_a_non_admin_and_changes_nothing(
    shop: Shop, command: str
) -> None:
    await stock(shop, "GAME", 2)
    sale = await checkout(shop, BUYER, "GAME")
    await pay(shop, sale)
    await key_message(shop, BUYER)
    await outbox_empty(shop)
    await buyers.ban(shop.db, BANNED, "chargeback", admin_id=ADMIN)
    before = await every_row(shop)
    typed = f"/{command} {ARGUMENTS.get(command, '')}".rstrip().format(order=sale.order_id)

    answer = await reply(shop.telegram, STRANGER, typed)
    after = await reply(shop.telegram, STRANGER, FOLLOW_UP)

    assert text(answer) == UNKNOWN_COMMAND
    assert "catalogue" in text(after)  # an ordinary message, not input to an admin command
    assert await every_row(shop) == before
