"""The service layer's reactions: a backorder filled at restock is a sale like any other.

Before the service layer, a restock that filled backorders woke the delivery worker but
counted no fulfilment and raised no low-stock alert. Through the running app: a paid order
with nothing in stock waits, an admin's /restock fills it, and the buyer's key, the
transition metric and the low-stock alert all follow from the one service call.
"""

from __future__ import annotations

import pytest

from store.models import OrderStatus
from tests.e2e.conftest import ADMIN, Launch
from tests.e2e.helpers import (
    checkout,
    expired,
    key_message,
    metric,
    new_keys,
    pay,
    post_ok,
    reply,
    stock,
    text,
    wait_for_status,
)

pytestmark = pytest.mark.usefixtures("afterwards")

BUYER = 8001
OTHER = 8002


async def test_a_backorder_filled_at_restock_counts_and_alerts_like_a_sale(
    launch: Launch,
) -> None:
    async with launch(out_of_stock_policy="backorder") as shop:
        await stock(shop, "LATE", new_keys(1, "LATE"), low_stock_threshold=3)
        sale = await checkout(shop, BUYER, "LATE")

        # Its checkout expires (the key goes back on sale and another buyer takes it)...
        await post_ok(shop, expired(shop.stripe, sale.session_id))
        other = await checkout(shop, OTHER, "LATE")
        await pay(shop, other)
        await wait_for_status(shop, other.order_id, OrderStatus.FULFILLED)
        # ...and then its payment arrives, with nothing left to give.
        await pay(shop, sale)
        await wait_for_status(shop, sale.order_id, OrderStatus.BACKORDERED)
        before = await metric(shop, "keyvend_transitions_total", outcome="fulfilled")

        fresh = new_keys(2, "LATE")
        answer = await reply(
            shop.telegram, ADMIN, "/restock LATE\n" + "\n".join(fresh), contains="Filled"
        )

        assert "Filled 1 backordered order." in text(answer)
        await wait_for_status(shop, sale.order_id, OrderStatus.FULFILLED)
        assert (await key_message(shop, BUYER)).spoiler_texts() == fresh[:1]
        assert await metric(shop, "keyvend_transitions_total", outcome="fulfilled") == before + 1
        await shop.telegram.wait_for(
            lambda m: m.chat_id == ADMIN and "Low stock: LATE has 1 left" in text(m)
        )
