"""A hostile buyer against the real bot, on SQLite and PostgreSQL: hoarding stock, input that
used to raise, flooding from a channel, and a reservation shorter than Stripe's minimum.

Each test drives the running app through the fake Bot API and fake Stripe, and the audit
after it (`afterwards`) runs `keyvend check` and greps every log line for the keys.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from sqlalchemy import select

from bot import jobs
from store.models import KeyStatus, Order, OrderStatus
from tests.e2e.conftest import Launch
from tests.e2e.helpers import (
    CapturedLogs,
    captured_logs,
    cards_for,
    checkout,
    key_statuses,
    new_keys,
    open_card,
    open_pay_link,
    open_pay_links,
    order_status,
    paid,
    post_concurrently,
    reply,
    scalar,
    stock,
    text,
)

pytestmark = pytest.mark.usefixtures("afterwards")

HOARDER = 6001
CROWD = [7001 + i for i in range(20)]


async def test_one_buyer_cannot_hoard_a_product_and_twenty_others_still_buy(
    launch: Launch, database_url: str
) -> None:
    async with launch(database_url) as shop:
        await stock(shop, "HOARD", new_keys(30, "HOARD"), max_per_order=30)
        tg = shop.telegram

        # All 30 in one checkout: more than the larger of 10 keys and a quarter of 30.
        card = await open_card(shop, HOARDER, "HOARD", 30)
        answer = await open_pay_link(shop.http, card)
        assert answer.status == 409 and "(10)" in answer.reason, answer
        assert "add 10 more" in answer.reason, answer.reason
        assert await key_statuses(shop, "HOARD") == {KeyStatus.AVAILABLE: 30}
        # Ten is within the cap; ten more on top of them is not.
        held = await checkout(shop, HOARDER, "HOARD", 10)
        card = await open_card(shop, HOARDER, "HOARD", 10)
        # The same purchase again leads to the checkout holding those ten, not to ten more.
        assert (await open_pay_link(shop.http, card)).session_id == held.session_id
        card = await open_card(shop, HOARDER, "HOARD", 5)
        again = await open_pay_link(shop.http, card)
        assert again.status == 409 and "add 0 more" in again.reason, again

        answers = await open_pay_links(shop.http, await cards_for(tg, CROWD, "HOARD"))
        sessions = [a.session_id for a in answers.values()]
        assert None not in sessions, [a.reason for a in answers.values()]
        posted = await post_concurrently(shop, [paid(shop.stripe, s) for s in sessions])

        assert [p.outcome for p in posted] == ["fulfilled"] * len(CROWD)
        assert await order_status(shop, held.order_id) == OrderStatus.PENDING
        assert await key_statuses(shop, "HOARD") == {KeyStatus.SOLD: 20, KeyStatus.RESERVED: 10}


def _no_traceback(logs: CapturedLogs) -> None:
    written = logs.stream.getvalue()
    assert "Traceback" not in written and "failed" not in written, written[-2000:]


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        ("/buy GAME ²", "Usage: /buy SKU"),  # "²".isdigit() is True; int("²") raises
        ("/buy GAME ٣", "Usage: /buy SKU"),  # an Arabic-Indic digit: not a quantity here
        ("/buy GAME 99999999999999999999", "Usage: /buy SKU"),
        ("/start paid_" + "9" * 30, "Order not found."),  # past any id column
        ("/start paid_²", "Order not found."),
    ],
)
async def test_odd_numbers_from_a_buyer_get_a_clear_answer_and_no_traceback(
    launch: Launch, database_url: str, command: str, answer: str
) -> None:
    async with launch(database_url) as shop:
        await stock(shop, "GAME", new_keys(2, "GAME"))
        with captured_logs(shop.settings) as logs:
            got = await reply(shop.telegram, 3001, command)
        assert answer in text(got), text(got)
        _no_traceback(logs)


async def test_a_channel_flooding_the_bot_is_rate_limited_like_a_user(launch: Launch) -> None:
    async with launch(rate_limit_updates="5/minute") as shop:
        await stock(shop, "GAME", new_keys(1, "GAME"))
        channel = -1001234567890
        for n in range(12):
            # A channel post has a chat and no sender.
            shop.telegram._queue(
                {
                    "channel_post": {
                        "message_id": 100 + n,
                        "date": int(time.time()),
                        "chat": {"id": channel, "type": "channel", "title": "Flood"},
                        "text": f"post {n}",
                    }
                }
            )
        # A buyer's message after the flood: once it is answered, every post was read.
        await reply(shop.telegram, 3001, "/help")
        await asyncio.sleep(0.5)  # and any answer to a post would have come by now

        assert len(shop.telegram.messages_to(channel)) == 5


async def test_a_reservation_shorter_than_stripes_minimum_ends_on_time(
    launch: Launch, database_url: str
) -> None:
    async with launch(database_url, checkout_ttl=timedelta(minutes=5)) as shop:
        await stock(shop, "GAME", new_keys(2, "GAME"))
        sale = await checkout(shop, 3001, "GAME")
        reserved_until = await scalar(
            shop, select(Order.reserved_until).where(Order.id == sale.order_id)
        )
        check_after = await scalar(shop, select(Order.check_after).where(Order.id == sale.order_id))
        session = shop.stripe.sessions[sale.session_id]
        # Stripe keeps the page open 30 minutes; the shop's own check is when its hold ends.
        assert session["expires_at"] >= time.time() + 29 * 60
        assert check_after == reserved_until

        await jobs.reconcile(shop.parts.shop, now=reserved_until + timedelta(seconds=1))

        assert session["status"] == "expired"  # closed at Stripe: nobody can pay it any more
        assert any(r.path.endswith(f"/{sale.session_id}/expire") for r in shop.stripe.requests)
        assert await order_status(shop, sale.order_id) == OrderStatus.EXPIRED
        assert await key_statuses(shop, "GAME") == {KeyStatus.AVAILABLE: 2}
        wait = await jobs.seconds_to_next_check(shop.parts.shop, 180.0)
        assert wait == 180.0  # nothing open: back to the usual interval
