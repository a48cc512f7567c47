"""The store side of running the shop from the chat: random allocation, categories, bans,
chosen languages and usernames — on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from store import buyers, catalogue, lookup, orders, reports
from store.catalogue import ProductChanges
from store.crypto import KeyVault
from store.db import Database
from store.errors import Blacklisted, InvalidInput
from store.models import Allocation, AuditEntry, Buyer, Key
from tests.store.conftest import (
    BACKORDER as BACKORDER_POLICY,
)
from tests.store.conftest import (
    FakeGateway,
    invariants_hold,
    open_order,
    scalar,
    stocked,
)


async def _reserved_ids(db: Database, order_id: int) -> list[int]:
    async def work(session):
        return list(await session.scalars(select(Key.id).where(Key.order_id == order_id)))

    return await db.read(work)


async def test_random_allocation_does_not_hand_out_keys_in_import_order(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=200, allocation=Allocation.RANDOM)

    taken = [
        await _reserved_ids(db, await open_order(db, gateway, product.id, b, 2)) for b in (1, 2, 3)
    ]

    ids = sorted(i for order in taken for i in order)
    assert len(set(ids)) == 6
    # Oldest-first would give keys 1..6; at random that happens about once in 10^11 runs.
    assert ids != list(range(1, 7))
    await invariants_hold(db)


async def test_oldest_first_is_the_default_allocation(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=20)

    assert await _reserved_ids(db, await open_order(db, gateway, product.id, 1, 3)) == [1, 2, 3]


async def test_random_allocation_under_concurrency_never_gives_a_key_twice(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=30, allocation=Allocation.RANDOM)

    orders = await asyncio.gather(
        *(open_order(db, gateway, product.id, buyer, 1) for buyer in range(1, 21))
    )

    reserved = [i for o in orders for i in await _reserved_ids(db, o)]
    assert len(reserved) == len(set(reserved)) == 20
    await invariants_hold(db)


async def test_category_and_allocation_are_edited_like_any_field(
    db: Database, vault: KeyVault
) -> None:
    await stocked(db, vault, keys=0)

    product = await catalogue.edit_product(
        db,
        "GAME",
        ProductChanges(category="  Steam   games ", allocation=Allocation.RANDOM),
        admin_id=7,
    )

    assert (product.category, product.allocation) == ("Steam games", "random")
    with pytest.raises(InvalidInput):
        await catalogue.edit_product(db, "GAME", ProductChanges(category="x" * 65))
    with pytest.raises(InvalidInput):
        await catalogue.edit_product(db, "GAME", ProductChanges(name="x", language="Chinese!"))


async def test_a_banned_buyer_cannot_check_out_and_the_ban_is_audited(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=5)

    await buyers.ban(db, 77, "chargebacks", admin_id=9)
    with pytest.raises(Blacklisted):
        await open_order(db, gateway, product.id, 77)
    listed = await buyers.banned(db)
    await buyers.unban(db, 77, admin_id=9)
    await open_order(db, gateway, product.id, 77)

    assert [(b.id, b.ban_reason) for b in listed] == [(77, "chargebacks")]
    actions = await scalar(db, select(AuditEntry.action).where(AuditEntry.admin_id == 9).limit(1))
    assert actions == "buyer.ban"
    assert await buyers.banned(db) == []


async def test_a_chosen_language_survives_later_visits_in_another_telegram_language(
    db: Database,
) -> None:
    await buyers.remember(db, 5, "en", username="@Alice_K")
    await buyers.choose_language(db, 5, "zh")
    await buyers.remember(db, 5, "en", username="alice_k")

    assert await buyers.chosen_language(db, 5) == "zh"
    assert await scalar(db, select(Buyer.language).where(Buyer.id == 5)) == "zh"
    assert (await buyers.find(db, "@ALICE_K")).id == 5
    assert await buyers.chosen_language(db, 6) is None


async def test_orders_are_found_by_id_buyer_username_and_key_digest(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=3)
    await buyers.remember(db, 41, "en", username="Keen")
    first = await open_order(db, gateway, product.id, 41)
    second = await open_order(db, gateway, product.id, 42)
    held = await _reserved_ids(db, first)

    async def key_digest(session):
        return await session.scalar(select(Key.digest).where(Key.id == held[0]))

    digest = await db.read(key_digest)

    assert [o.id for o in await lookup.find_orders(db, order_or_buyer=second)] == [second]
    assert [o.id for o in await lookup.find_orders(db, order_or_buyer=41)] == [first]
    assert [o.id for o in await lookup.find_orders(db, username="@keen")] == [first]
    assert [o.id for o in await lookup.find_orders(db, key_digest=digest)] == [first]
    assert await lookup.find_orders(db, key_digest=vault.digest("GAME-KEY-99999")) == []
    card = await lookup.order_card(db, first)
    assert (card.buyer.username, card.keys, card.status) == ("keen", 1, "pending")


async def test_daily_revenue_and_the_export_rows(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=3)
    paid = await open_order(db, gateway, product.id, 1, 2)
    await orders.fulfil(db, gateway.payment(paid), BACKORDER_POLICY)
    await open_order(db, gateway, product.id, 2)
    now = datetime.now(UTC)

    days = await reports.daily(db)
    rows = await reports.orders_between(db, now - timedelta(days=1), now + timedelta(days=1))

    assert [(d.day, d.currency, d.orders, d.revenue_minor) for d in days] == [
        (now.date(), "usd", 1, 1998)
    ]
    assert await reports.daily(db, sku="OTHER") == []
    assert [(r.id, r.status, r.quantity) for r in rows] == [
        (paid, "fulfilled", 2),
        (paid + 1, "pending", 1),
    ]
