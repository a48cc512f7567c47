"""Paid broadcast (PAID_BROADCAST=true): the sale's cards and the key deliveries go out with
Telegram's `allow_paid_broadcast`, nothing else does, and /stats shows the cost from the
database, so it is still there after a restart."""

from __future__ import annotations

from datetime import UTC, datetime

from store import broadcasts
from tests.e2e.conftest import ADMIN
from tests.e2e.helpers import (
    checkout,
    key_message,
    new_keys,
    pay,
    reply,
    stock,
    text,
    wait_until,
)

BUYER = 9101


async def test_cards_and_keys_go_as_paid_broadcast_and_stats_show_the_cost_after_a_restart(
    launch, database_url
) -> None:
    async with launch(database_url, paid_broadcast=True) as shop:
        await stock(shop, "GAME", new_keys(1, "PAID"))
        await pay(shop, await checkout(shop, BUYER, "GAME"))
        delivered = await key_message(shop, BUYER)
        answer = await reply(shop.telegram, BUYER, "/help")

        card, *_ = shop.telegram.messages_to(BUYER)
        assert card.params.get("allow_paid_broadcast") is True
        assert delivered.params.get("allow_paid_broadcast") is True
        assert "allow_paid_broadcast" not in answer.params  # a plain answer: the free rate
        assert shop.telegram.paid_broadcasts == 2
        today = datetime.now(UTC).date()

        async def counted() -> bool:
            return (await broadcasts.usage(shop.db, since=today)).messages == 2

        await wait_until(counted, what="the two paid-broadcast messages counted")

    async with launch(database_url, paid_broadcast=True) as shop:
        summary = await reply(shop.telegram, ADMIN, "/stats", contains="Stock")

        assert (
            "Paid broadcast, last 30 days: 2 messages, 0 of them past the free rate: about 0.0 ⭐"
            in text(summary)
        )
