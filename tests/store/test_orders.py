"""The order state machine under concurrency, duplicates and reordering."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from store import orders
from store.crypto import KeyVault
from store.db import Database
from store.errors import OutOfStock
from store.models import Delivery, Key, KeyStatus, Order, OrderStatus
from store.orders import Outcome
from store.payments import Event
from tests.store.conftest import POLICY, REFUND, FakeGateway, scalar, stocked


async def test_fifty_concurrent_checkouts_for_ten_keys_reserve_exactly_ten(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=10)

    async def buy(buyer: int):
        return await orders.checkout(
            db,
            gateway,
            buyer_id=buyer,
            language="en",
            product_id=product.id,
            quantity=1,
            policy=POLICY,
        )

    results = await asyncio.gather(*(buy(1000 + i) for i in range(50)), return_exceptions=True)
    won = [r for r in results if isinstance(r, orders.CheckoutResult)]
    lost = [r for r in results if isinstance(r, OutOfStock)]
    assert len(won) == 10 and len(lost) == 40, [
        r for r in results if not isinstance(r, (orders.CheckoutResult, OutOfStock))
    ]
    reserved = await scalar(db, select(func.count()).where(Key.status == KeyStatus.RESERVED))
    holders = await scalar(
        db, select(func.count(func.distinct(Key.order_id))).where(Key.order_id.is_not(None))
    )
    assert reserved == 10 and holders == 10
    assert await scalar(db, select(func.count()).select_from(Order)) == 10


async def test_twenty_concurrent_fulfilments_of_one_order_allocate_once(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=5)
    sale = await orders.checkout(
        db, gateway, buyer_id=7, language="en", product_id=product.id, quantity=2, policy=POLICY
    )
    payment = gateway.payment(sale.order_id)
    results = await asyncio.gather(
        *(
            orders.fulfil(db, payment, REFUND, event=Event("fake", f"evt_{i}", "paid"))
            for i in range(20)
        )
    )
    outcomes = sorted(r.outcome for r in results)
    assert outcomes.count(Outcome.FULFILLED) == 1
    assert outcomes.count(Outcome.UNCHANGED) == 19
    sold = await scalar(db, select(func.count()).where(Key.status == KeyStatus.SOLD))
    assert sold == 2
    assert await scalar(db, select(func.count()).select_from(Delivery)) == 1


async def test_replayed_event_is_applied_once(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=3)
    sale = await orders.checkout(
        db, gateway, buyer_id=7, language="en", product_id=product.id, quantity=1, policy=POLICY
    )
    event = Event("fake", "evt_once", "checkout.session.completed")
    first = await orders.fulfil(db, gateway.payment(sale.order_id), REFUND, event=event)
    again = await orders.fulfil(db, gateway.payment(sale.order_id), REFUND, event=event)
    assert (first.outcome, again.outcome) == (Outcome.FULFILLED, Outcome.DUPLICATE)
    status = await scalar(db, select(Order.status).where(Order.id == sale.order_id))
    assert status == OrderStatus.FULFILLED
