""" "Notify me" on a sold-out product, on SQLite and PostgreSQL, through the running app.

Two backordered orders wait for keys and three buyers press "Notify me" on the sold-out
card. A restock from the command line fills the backorders (key deliveries queued) and
queues the notices: the keys reach their buyers before any notice goes out, each watcher
is told exactly once, and a later restock tells nobody again. Proven on the fake's sent
messages and on the deliveries and restock_watchers rows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from store.models import Delivery, DeliveryKind, DeliveryStatus, OrderStatus, RestockWatcher
from tests.e2e.conftest import ADMIN, Afterwards, Launch, Shop
from tests.e2e.helpers import (
    checkout,
    expired,
    key_message,
    new_keys,
    open_card,
    order_status,
    pay,
    post_ok,
    press,
    reply,
    rows,
    stock,
    text,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("afterwards")

WATCHERS = (3101, 3102, 3103)
BACK = "is back in stock"


async def _backorder(shop: Shop, buyer: int) -> int:
    """An order paid after its reservation lapsed and the stock sold out: backordered."""
    sale = await checkout(shop, buyer, "RARE")
    await post_ok(shop, expired(shop.stripe, sale.session_id))
    return sale


async def _notices(shop: Shop) -> list:
    return await rows(
        shop,
        select(Delivery.chat_id, Delivery.status, Delivery.sent_at).where(
            Delivery.kind == DeliveryKind.RESTOCKED
        ),
    )


async def test_watchers_are_told_once_and_only_after_the_restocks_key_deliveries(
    launch: Launch, database_url: str, afterwards: Afterwards, tmp_path: Path
) -> None:
    async with launch(database_url, out_of_stock_policy="backorder") as shop:
        await stock(shop, "RARE", new_keys(2, "RARE"), name="Rare game", low_stock_threshold=0)
        waiting = [await _backorder(shop, buyer) for buyer in (3001, 3002)]
        everything = await checkout(shop, 3003, "RARE", 2)
        await pay(shop, everything)
        await key_message(shop, everything.buyer)
        for sale in waiting:
            await pay(shop, sale)
            assert await order_status(shop, sale.order_id) == OrderStatus.BACKORDERED

        for watcher in WATCHERS:
            card = await open_card(shop, watcher, "RARE")
            assert "Sold out" in text(card)
            data = card.button("Notify me")["callback_data"]
            answer = await press(shop.telegram, watcher, card, data)
            assert answer["text"] == "I will tell you here when it is back in stock."
        await press(shop.telegram, WATCHERS[0], card, data)  # twice: still one watcher row

        keys = new_keys(5, "RARE")  # two for the backorders, three left to buy
        (tmp_path / "keys.txt").write_text("\n".join(keys) + "\n")
        imported = await shop.cli("keys", "import", "RARE", str(tmp_path / "keys.txt"))
        afterwards.outputs += [imported.stdout, imported.stderr]
        assert imported.returncode == 0, imported.stderr
        assert "filled 2 backordered orders" in imported.stdout

        told = await shop.telegram.wait_for_count(
            lambda m: m.chat_id in WATCHERS and BACK in text(m), len(WATCHERS), timeout=30
        )
        delivered = [await key_message(shop, sale.buyer) for sale in waiting]
        await wait_until(lambda: _all_sent(shop), what="the notices recorded as sent", timeout=30)

        # A later restock (by an admin, in the chat) tells nobody again.
        await reply(
            shop.telegram, ADMIN, "/restock RARE\n" + new_keys(1, "RARE")[0], contains="added 1"
        )
        notices = await _notices(shop)
        watchers = await rows(shop, select(RestockWatcher.buyer_id, RestockWatcher.notified_at))
        key_rows = await rows(
            shop,
            select(Delivery.sent_at).where(
                Delivery.kind == DeliveryKind.KEYS,
                Delivery.order_id.in_([s.order_id for s in waiting]),
            ),
        )

    assert sorted(m.chat_id for m in told) == sorted(WATCHERS)
    assert text(told[0]).startswith("🔔 Rare game is back in stock.")
    # The keys went out before the first notice: on the wire and in the outbox.
    assert max(m.time for m in delivered) < min(m.time for m in told)
    assert max(at for (at,) in key_rows) <= min(at for _, _, at in notices)
    assert sorted((chat, status) for chat, status, _ in notices) == [
        (w, DeliveryStatus.SENT) for w in WATCHERS
    ]
    assert sorted(b for b, _ in watchers) == sorted(WATCHERS)
    assert all(at is not None for _, at in watchers)
    for watcher in WATCHERS:  # exactly one notice each, the second restock included
        assert len([m for m in shop.telegram.messages_to(watcher) if BACK in text(m)]) == 1


async def _all_sent(shop: Shop) -> bool:
    notices = await _notices(shop)
    return len(notices) == len(WATCHERS) and all(s == DeliveryStatus.SENT for _, s, _ in notices)
