"""The outbox on SQLite and PostgreSQL: leases, outcomes, retries, reveals and key expiry.

Workers claim queued deliveries with a lease: concurrent workers never get the same one, a
lease held by a worker that went quiet lapses and another worker takes the delivery over,
and only the worker still holding the lease can close the delivery (a message the other one
did send is still logged as shown, so it is removed from the chat in time). A retry keeps the
delivery queued with its attempts counted (a 429 wait is not an attempt); an undeliverable
one is never claimed again. Every key message sent is logged as a reveal with the time it
must leave the chat, and `expiring`/`mark_removed` hand those messages to the remover once.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from store import buyer_views, deliveries, orders
from store.check import check
from store.crypto import KeyVault
from store.db import Database
from store.deliveries import Done, Job, Outcome
from store.models import Delivery, DeliveryKind, DeliveryStatus, Reveal
from store.payments import CheckoutState
from tests.store.conftest import BACKORDER, REFUND, FakeGateway, open_order, stocked

LEASE = timedelta(seconds=60)
TTL = timedelta(minutes=15)


async def queue_key_deliveries(
    db: Database, vault: KeyVault, gateway: FakeGateway, n: int
) -> list[int]:
    """`n` paid orders of one key each, so `n` key deliveries queued; returns the order ids."""
    product = await stocked(db, vault, keys=n)
    order_ids = []
    for buyer in range(1, n + 1):
        order_id = await open_order(db, gateway, product.id, buyer)
        await orders.fulfil(db, gateway.payment(order_id), REFUND)
        order_ids.append(order_id)
    return order_ids


async def claim(
    db: Database, vault: KeyVault, owner: str, now: datetime, limit: int = 100
) -> list[Job]:
    return await deliveries.claim(db, vault, owner, limit=limit, lease=LEASE, now=now)


async def rows(db: Database) -> list[Delivery]:
    async def work(session):
        return list((await session.scalars(select(Delivery).order_by(Delivery.id))).all())

    return await db.read(work)


async def reveals(db: Database) -> list[Reveal]:
    async def work(session):
        return list((await session.scalars(select(Reveal).order_by(Reveal.id))).all())

    return await db.read(work)


def sent(job: Job, *message_ids: int) -> Done:
    return Done(job, Outcome.SENT, message_ids=message_ids or (1000 + job.id,))


# ---------------------------------------------------------------- claiming


async def test_concurrent_workers_never_claim_the_same_delivery(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    await queue_key_deliveries(db, vault, gateway, 40)
    now = datetime.now(UTC)

    claims = await asyncio.gather(
        *(claim(db, vault, f"worker-{w}", now, limit=7) for w in range(8))
    )

    ids = [job.id for jobs in claims for job in jobs]
    assert len(ids) == len(set(ids)) == 40
    owners = {d.id: d.lease_owner for d in await rows(db)}
    for w, jobs in enumerate(claims):
        assert all(owners[job.id] == f"worker-{w}" for job in jobs)
    # Every lease is live: nobody gets anything until one lapses.
    assert await claim(db, vault, "late-worker", now + LEASE / 2) == []


async def test_a_claim_carries_the_keys_decrypted_and_never_shows_them(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    [order] = await queue_key_deliveries(db, vault, gateway, 1)
    [job] = await claim(db, vault, "w", datetime.now(UTC))
    assert (job.order_id, job.kind, job.chat_id, job.attempts) == (order, DeliveryKind.KEYS, 1, 0)
    assert job.keys == ("GAME-KEY-00000",)
    assert "GAME-KEY" not in repr(job)


async def test_a_lapsed_lease_is_taken_over_and_only_the_holder_records(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    await queue_key_deliveries(db, vault, gateway, 1)
    now = datetime.now(UTC)
    [first] = await claim(db, vault, "dead-worker", now)
    assert await claim(db, vault, "other", now + LEASE - timedelta(seconds=1)) == []

    [taken] = await claim(db, vault, "other", now + LEASE + timedelta(seconds=1))
    assert taken.id == first.id

    # The first worker wakes up and reports: its lease is gone, so the delivery is not its to
    # close. The message it did send is logged as shown, so that it is removed from the chat.
    await deliveries.finish(
        db, "dead-worker", [sent(first, 1)], key_message_ttl=TTL, now=now + LEASE * 2
    )
    [row] = await rows(db)
    assert (row.status, row.lease_owner, row.message_id, row.attempts) == (
        DeliveryStatus.QUEUED,
        "other",
        None,
        0,
    )
    assert [r.message_id for r in await reveals(db)] == [1]

    await deliveries.finish(db, "other", [sent(taken, 2)], key_message_ttl=TTL, now=now + LEASE * 2)
    [row] = await rows(db)
    assert (row.status, row.lease_owner, row.message_id, row.attempts) == (
        DeliveryStatus.SENT,
        None,
        2,
        1,
    )
    assert [r.message_id for r in await reveals(db)] == [1, 2]
    assert await claim(db, vault, "anyone", now + LEASE * 10) == []


async def test_concurrent_claims_after_a_crash_share_the_lapsed_work_once(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    await queue_key_deliveries(db, vault, gateway, 30)
    now = datetime.now(UTC)
    assert len(await claim(db, vault, "crashed", now)) == 30
    later = now + LEASE + timedelta(seconds=1)

    claims = await asyncio.gather(
        *(claim(db, vault, f"survivor-{w}", later, limit=5) for w in range(6))
    )

    ids = [job.id for jobs in claims for job in jobs]
    assert len(ids) == len(set(ids)) == 30


# ---------------------------------------------------------------- retries and failures


async def test_a_retry_stays_queued_with_its_attempts_counted(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    await queue_key_deliveries(db, vault, gateway, 2)
    now = datetime.now(UTC)
    failed, throttled = await claim(db, vault, "w", now)
    retry_at = now + timedelta(minutes=5)
    await deliveries.finish(
        db,
        "w",
        [
            Done(failed, Outcome.RETRY, retry_at=retry_at, error="NetworkError: timed out"),
            Done(
                throttled,
                Outcome.RETRY,
                retry_at=retry_at,
                error="429 Too Many Requests",
                count_attempt=False,
            ),
        ],
        key_message_ttl=TTL,
        now=now,
    )

    first, second = await rows(db)
    assert (first.status, first.attempts, first.last_error, first.lease_owner) == (
        DeliveryStatus.QUEUED,
        1,
        "NetworkError: timed out",
        None,
    )
    assert (second.status, second.attempts) == (
        DeliveryStatus.QUEUED,
        0,
    )  # waiting out a 429 is no attempt
    assert first.next_attempt_at == second.next_attempt_at == retry_at
    assert await claim(db, vault, "w", now + timedelta(minutes=4)) == []
    again = await claim(db, vault, "w2", retry_at)
    assert [(j.id, j.attempts) for j in again] == [(failed.id, 1), (throttled.id, 0)]


async def test_an_undeliverable_delivery_is_never_claimed_again(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    await queue_key_deliveries(db, vault, gateway, 1)
    now = datetime.now(UTC)
    [job] = await claim(db, vault, "w", now)
    await deliveries.finish(
        db,
        "w",
        [Done(job, Outcome.UNDELIVERABLE, error="Forbidden: bot was blocked")],
        key_message_ttl=TTL,
        now=now,
    )
    [row] = await rows(db)
    assert (row.status, row.attempts, row.last_error) == (
        DeliveryStatus.UNDELIVERABLE,
        1,
        "Forbidden: bot was blocked",
    )
    assert await claim(db, vault, "w", now + timedelta(days=1)) == []


async def test_a_delivery_queued_past_its_retry_budget_fails_the_check(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    await queue_key_deliveries(db, vault, gateway, 1)
    now = datetime.now(UTC)
    for _ in range(3):
        [job] = await claim(db, vault, "w", now)
        await deliveries.finish(
            db,
            "w",
            [Done(job, Outcome.RETRY, retry_at=now, error="5xx")],
            key_message_ttl=TTL,
            now=now,
        )
    findings = {f.invariant: f for f in await check(db, max_attempts=3)}
    assert findings["I4"].violations == (f"delivery {job.id}",)
    assert all(f.ok for f in await check(db, max_attempts=4))


# ---------------------------------------------------------------- reveals and key expiry


async def test_each_key_message_sent_is_a_reveal_with_its_removal_time(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    [order] = await queue_key_deliveries(db, vault, gateway, 1)
    now = datetime.now(UTC)
    [first] = await claim(db, vault, "w", now)
    # A long key list went out as two messages: both are reveals, both must be removed.
    await deliveries.finish(db, "w", [sent(first, 11, 12)], key_message_ttl=TTL, now=now)
    await buyer_views.show_keys_again(db, order, buyer_id=1)
    [reshow] = await claim(db, vault, "w", now + timedelta(minutes=1))
    assert (reshow.kind, reshow.keys) == (DeliveryKind.RESHOW, first.keys)
    await deliveries.finish(
        db, "w", [sent(reshow, 13)], key_message_ttl=TTL, now=now + timedelta(minutes=1)
    )

    logged = await reveals(db)
    assert [(r.order_id, r.how, r.message_id, r.chat_id) for r in logged] == [
        (order, DeliveryKind.KEYS, 11, 1),
        (order, DeliveryKind.KEYS, 12, 1),
        (order, DeliveryKind.RESHOW, 13, 1),
    ]
    assert [r.delete_after for r in logged] == [
        now + TTL,
        now + TTL,
        now + timedelta(minutes=1) + TTL,
    ]
    assert [r.revealed_at for r in logged] == [now, now, now + timedelta(minutes=1)]

    assert await deliveries.expiring(db, now=now + TTL - timedelta(seconds=1)) == []
    due = await deliveries.expiring(db, now=now + TTL)
    assert [(e.chat_id, e.message_id) for e in due] == [(1, 11), (1, 12)]
    await deliveries.mark_removed(db, [e.reveal_id for e in due])
    assert [e.message_id for e in await deliveries.expiring(db, now=now + timedelta(hours=1))] == [
        13
    ]
    # The reveal log stays: it is the evidence if the buyer disputes the charge.
    assert len(await reveals(db)) == 3


async def test_notices_are_not_reveals_and_no_ttl_means_no_removal(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=1)
    late = await open_order(db, gateway, product.id, 5)
    await orders.close_unpaid(db, late, CheckoutState.EXPIRED)
    taker = await open_order(db, gateway, product.id, 6)
    await orders.fulfil(db, gateway.payment(taker), BACKORDER)
    await orders.fulfil(db, gateway.payment(late), BACKORDER)  # nothing left: a backorder notice

    now = datetime.now(UTC)
    jobs = await claim(db, vault, "w", now)
    assert sorted(j.kind for j in jobs) == [DeliveryKind.BACKORDERED, DeliveryKind.KEYS]
    notice = next(j for j in jobs if j.kind is DeliveryKind.BACKORDERED)
    assert notice.keys == ()
    await deliveries.finish(db, "w", [sent(j) for j in jobs], key_message_ttl=None, now=now)

    [reveal] = await reveals(db)
    assert (reveal.order_id, reveal.delete_after) == (taker, None)
    assert await deliveries.expiring(db, now=now + timedelta(days=365)) == []
