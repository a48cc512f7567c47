"""The transaction boundary: a busy database delays a write, it never loses one."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from store import buyer_views, orders
from store.crypto import KeyVault
from store.db import Database
from store.models import Key, KeyStatus, OrderStatus
from store.orders import Outcome
from store.payments import Event
from tests.store.conftest import POLICY, REFUND, FakeGateway, stocked


def _hold_write_lock(path: str, seconds: float, taken: threading.Event) -> None:
    """Another process's writer: takes SQLite's write lock and sits on it."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    taken.set()
    time.sleep(seconds)
    other.execute("COMMIT")
    other.close()


async def test_payments_wait_out_another_writer_and_none_is_lost(
    sqlite_url: str, vault: KeyVault
) -> None:
    # A busy timeout far shorter than the lock is held: only the retries can carry the writes.
    db = Database(sqlite_url, busy_timeout=0.05)
    gateway = FakeGateway()
    try:
        product = await stocked(db, vault, keys=5)
        sales = [
            await orders.checkout(
                db,
                gateway,
                buyer_id=70 + i,
                language="en",
                product_id=product.id,
                quantity=1,
                policy=POLICY,
            )
            for i in range(5)
        ]
        taken = threading.Event()
        holder = threading.Thread(
            target=_hold_write_lock, args=(make_url(sqlite_url).database, 1.0, taken), daemon=True
        )
        holder.start()
        await asyncio.to_thread(taken.wait)

        started = time.monotonic()
        results = await asyncio.gather(
            *(
                orders.fulfil(
                    db,
                    gateway.payment(s.order_id),
                    REFUND,
                    event=Event("fake", f"evt_{s.order_id}", "paid"),
                )
                for s in sales
            )
        )
        waited = time.monotonic() - started
        holder.join()

        assert [r.outcome for r in results] == [Outcome.FULFILLED] * 5
        assert waited >= 0.5, "the writes should have had to wait for the other writer"

        async def sold(session):
            return await session.scalar(select(func.count()).where(Key.status == KeyStatus.SOLD))

        assert await db.read(sold) == 5
        for buyer, sale in enumerate(sales, start=70):
            assert (
                await buyer_views.buyer_order(db, sale.order_id, buyer, "en")
            ).status == OrderStatus.FULFILLED
    finally:
        await db.dispose()


async def test_a_failing_unit_is_undone_alone_when_writes_are_committed_together(
    sqlite_url: str, vault: KeyVault
) -> None:
    # Concurrent checkouts share one SQLite transaction (group commit): the ones that fail
    # (out of stock) must leave no trace, the others must all commit.
    db = Database(sqlite_url)
    gateway = FakeGateway()
    try:
        product = await stocked(db, vault, keys=3)
        results = await asyncio.gather(
            *(
                orders.checkout(
                    db,
                    gateway,
                    buyer_id=500 + i,
                    language="en",
                    product_id=product.id,
                    quantity=2,
                    policy=POLICY,
                )
                for i in range(6)
            ),
            return_exceptions=True,
        )
        won = [r for r in results if isinstance(r, orders.CheckoutResult)]
        assert len(won) == 1, results

        async def counts(session):
            reserved = await session.scalar(
                select(func.count()).where(Key.status == KeyStatus.RESERVED)
            )
            holders = await session.scalar(select(func.count(func.distinct(Key.order_id))))
            return reserved, holders

        assert await db.read(counts) == (2, 1)
    finally:
        await db.dispose()
