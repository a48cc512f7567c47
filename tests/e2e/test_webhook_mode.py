"""Telegram webhook mode: the shop registers its webhook with a secret token, takes updates
only when they carry it, and sells end to end with no polling at all.

The shop's PUBLIC_URL is its own plain-HTTP address, so FakeTelegram posts the updates it is
given straight to `/telegram/webhook` on the running app, as Telegram would.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from bot.app import telegram_secret
from store.models import Buyer, OrderStatus
from tests.e2e.conftest import Shop, free_port, running, shop_settings
from tests.e2e.helpers import (
    checkout,
    key_message,
    order_status,
    pay,
    post,
    reply,
    scalar,
    stock,
    text,
)

BUYER = 8001
INTRUDER = 8002
WEBHOOK = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


@pytest.fixture
async def webhook_shop(
    sqlite_url: str,
    telegram,
    stripe_api,
    key_secret: str,
) -> AsyncIterator[Shop]:
    port = free_port()
    settings = shop_settings(
        sqlite_url,
        telegram,
        stripe_api,
        key_secret,
        http_port=port,
        telegram_mode="webhook",
        public_url=f"http://127.0.0.1:{port}",
    )
    async with running(settings, telegram, stripe_api) as shop:
        yield shop


def _update(user: int, command: str, update_id: int = 900_001) -> dict:
    return {
        "update_id": update_id,
        "message": {
            "message_id": 1,
            "date": int(time.time()),
            "text": command,
            "chat": {"id": user, "type": "private", "first_name": "Eve"},
            "from": {"id": user, "is_bot": False, "first_name": "Eve", "language_code": "en"},
            "entities": [{"type": "bot_command", "offset": 0, "length": len(command.split()[0])}],
        },
    }


async def test_the_webhook_is_registered_with_a_secret_token(webhook_shop: Shop) -> None:
    registered = [c for c in webhook_shop.telegram.calls if c.method == "setWebhook"]

    assert len(registered) == 1
    params = registered[0].params
    assert params["url"] == f"{webhook_shop.url}{WEBHOOK}"
    assert params["secret_token"] == telegram_secret(webhook_shop.settings)
    assert len(params["secret_token"]) >= 32
    assert not [c for c in webhook_shop.telegram.calls if c.method == "getUpdates"]


async def test_a_purchase_works_end_to_end_over_the_webhook(webhook_shop: Shop) -> None:
    shop, tg = webhook_shop, webhook_shop.telegram
    await stock(shop, "GAME", ["HOOK-KEY-1", "HOOK-KEY-2"])

    sale = await checkout(shop, BUYER, "GAME")
    await pay(shop, sale)

    assert (await key_message(shop, BUYER)).spoiler_texts() == ["HOOK-KEY-1"]
    assert await order_status(shop, sale.order_id) == OrderStatus.FULFILLED
    # Every update went through the app's webhook, and each was accepted the first time.
    assert tg.webhook_deliveries and {status for _, status in tg.webhook_deliveries} == {200}
    assert not tg.webhook_failures


@pytest.mark.parametrize(
    "header", [None, "", "wrong-secret", "x" * 64], ids=["missing", "empty", "wrong", "wrong-64"]
)
async def test_an_update_without_the_secret_is_refused_and_not_processed(
    webhook_shop: Shop,
    header: str | None,
) -> None:
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers[SECRET_HEADER] = header

    answer = await post(
        webhook_shop, WEBHOOK, json.dumps(_update(INTRUDER, "/start")).encode(), headers
    )
    # A real update right after it: once it is answered, the forged one would have been too.
    await reply(webhook_shop.telegram, BUYER, "/start")

    assert answer.status == 403
    answer.one_line_reason()
    assert not webhook_shop.telegram.messages_to(INTRUDER)
    assert await scalar(webhook_shop, select(Buyer.id).where(Buyer.id == INTRUDER)) is None


NOT_UPDATES = {
    "not JSON": b"{'update_id': 1",
    "not UTF-8": b"\xff\xfe\x00",
    "empty": b"",
    "null": b"null",
    "array": b"[]",
    "string": b'"update"',
    "no update_id": b'{"message": {"text": "/start"}}',
    "message not an object": b'{"update_id": 5, "message": "hi"}',
}


@pytest.mark.parametrize("case", list(NOT_UPDATES))
async def test_a_body_that_is_not_an_update_is_refused(webhook_shop: Shop, case: str) -> None:
    headers = {
        SECRET_HEADER: telegram_secret(webhook_shop.settings),
        "Content-Type": "application/json",
    }

    answer = await post(webhook_shop, WEBHOOK, NOT_UPDATES[case], headers)
    await reply(webhook_shop.telegram, BUYER, "/help")  # the shop still answers

    assert answer.status == 400, answer
    answer.one_line_reason()


async def test_the_right_secret_is_accepted(webhook_shop: Shop) -> None:
    # The control for the refusals above: the same hand-made update with the secret is served.
    headers = {
        SECRET_HEADER: telegram_secret(webhook_shop.settings),
        "Content-Type": "application/json",
    }

    answer = await post(
        webhook_shop, WEBHOOK, json.dumps(_update(INTRUDER, "/help")).encode(), headers
    )

    assert answer.status == 200
    reply_to_intruder = await webhook_shop.telegram.wait_for(lambda m: m.chat_id == INTRUDER)
    assert text(reply_to_intruder).startswith("/start")
