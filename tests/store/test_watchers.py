""" "Notify me" in the store, on SQLite and PostgreSQL: one notice per watcher per restock,
and restock notices never claimed while a key delivery is due.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from store import buyers, catalogue, deliveries, inventory, watchers
from store.crypto import KeyVault
from store.db import Database
from store.errors import NotFound
from store.models import Delivery, DeliveryKind, RestockWatcher
from tests.store.conftest import FakeGateway
from tests.store.test_deliveries import LEASE, TTL, queue_key_deliveries, sent


async def _count(db: Database, *where) -> int:
    return await db.read(lambda s: s.scalar(select(func.count()).select_from(*where)))


async def _notices(db: Database) -> list[int]:
    async def work(session):
        return list(
            (
                await session.scalars(
                    select(Delivery.chat_id).where(Delivery.kind == DeliveryKind.RESTOCKED)
                )
            ).all()
        )

    return await db.read(work)


async def test_each_watcher_is_told_once_per_restock_and_again_only_if_they_ask_again(
    db: Database, vault: KeyVault
) -> None:
    product = await catalogue.add_product(db, "RARE", "Rare game", "9.99", "usd")
    for buyer in (1, 2, 2, 3):  # pressing twice is one watcher
        await watchers.watch(db, buyer, product.id)

    first = await watchers.restocked(db, "RARE")
    second = await watchers.restocked(db, "RARE")
    await watchers.watch(db, 2, product.id)
    third = await watchers.restocked(db, "RARE")

    assert (first, second, third) == (3, 0, 1)
    assert sorted(await _notices(db)) == [1, 2, 2, 3]
    assert await _count(db, RestockWatcher) == 3


async def test_two_restocks_at_once_tell_each_watcher_once(db: Database, vault: KeyVault) -> None:
    product = await catalogue.add_product(db, "RARE", "Rare game", "9.99", "usd")
    for buyer in range(1, 21):
        await watchers.watch(db, buyer, product.id)

    told = await asyncio.gather(*(watchers.restocked(db, "RARE") for _ in range(4)))

    assert sum(told) == 20
    assert sorted(await _notices(db)) == list(range(1, 21))


async def test_a_restock_that_leaves_stock_queues_the_notices(
    db: Database, vault: KeyVault
) -> None:
    product = await catalogue.add_product(db, "RARE", "Rare game", "9.99", "usd")
    await watchers.watch(db, 7, product.id)

    await inventory.restock(db, vault, "RARE", inventory.parse_keys("K-1\nK-2"), source="test")

    assert await _notices(db) == [7]


async def test_watching_a_product_that_does_not_exist_is_refused(db: Database) -> None:
    with pytest.raises(NotFound):
        await watchers.watch(db, 1, 999)
    assert await _count(db, RestockWatcher) == 0


async def test_restock_notices_wait_until_no_key_delivery_is_due(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    order_ids = await queue_key_deliveries(db, vault, gateway, 3)  # product GAME
    game = await catalogue.get_product(db, sku="GAME")
    for buyer in (11, 12):
        await watchers.watch(db, buyer, game.id)
    await buyers.choose_language(db, 12, "zh")
    now = datetime.now(UTC)
    # Queued earlier than the keys: by time alone they would go first.
    await watchers.restocked(db, "GAME", now=now - timedelta(minutes=5))

    keys = await deliveries.claim(db, vault, "w", limit=100, lease=LEASE, now=now)
    while_sending = await deliveries.claim(db, vault, "w2", limit=100, lease=LEASE, now=now)
    await deliveries.finish(db, "w", [sent(j) for j in keys], key_message_ttl=TTL, now=now)
    notices = await deliveries.claim(db, vault, "w", limit=100, lease=LEASE, now=now)

    assert sorted(j.order_id for j in keys) == sorted(order_ids)
    assert {j.kind for j in keys} == {DeliveryKind.KEYS}
    assert while_sending == []  # keys still in flight hold the notices back
    assert sorted((j.chat_id, j.kind, j.order_id, j.language) for j in notices) == [
        (11, DeliveryKind.RESTOCKED, None, "en"),
        (12, DeliveryKind.RESTOCKED, None, "zh"),
    ]
    assert {(j.product_name, j.keys) for j in notices} == {("GAME key", ())}
