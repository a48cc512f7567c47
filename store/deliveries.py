"""The outbox: claiming queued deliveries, recording how each went, and key-message expiry.

Workers claim deliveries with a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL), so several
instances share the queue without sending one message twice; a claim held by a worker that
died lapses with its lease and is taken over; a live worker renews the leases of what it
is still sending. The outcome of each send is written back in batches (one transaction for
many messages), and only by the worker that still holds the lease. A reveal is recorded
whenever a key message went out, lease or not: it is evidence, and the message has to be
removed from the chat when its time is up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from store import allocation
from store.crypto import KeyVault
from store.db import Database
from store.models import (
    Buyer,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    Order,
    Product,
    Reveal,
)


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed delivery with everything needed to write the message."""

    id: int
    kind: DeliveryKind
    order_id: int | None  # None for a restock notice, which names only a product
    chat_id: int
    attempts: int
    language: str
    product_name: str
    quantity: int
    template: str
    keys: tuple[str, ...]  # plaintext, only for key deliveries; never logged
    lease_expires_at: datetime
    queued_at: datetime
    # The id of each of `keys`, for the buyer's "report a problem" buttons; empty when the
    # keys cannot be reported one by one (a shared key is every buyer's).
    key_ids: tuple[int, ...] = ()

    def __repr__(self) -> str:  # keep keys out of any accidental log line or traceback
        return (
            f"Job(id={self.id}, kind={self.kind}, order_id={self.order_id}, chat_id={self.chat_id})"
        )


class Outcome(StrEnum):
    SENT = "sent"
    RETRY = "retry"
    UNDELIVERABLE = "undeliverable"


@dataclass(frozen=True, slots=True)
class Done:
    """How one claimed delivery went."""

    job: Job
    outcome: Outcome
    message_ids: tuple[int, ...] = ()  # a long key list can take several messages
    retry_at: datetime | None = None
    error: str | None = None
    count_attempt: bool = True  # a 429 wait is not a failed attempt


@dataclass(frozen=True, slots=True)
class Expiring:
    reveal_id: int
    chat_id: int
    message_id: int


_KEY_KINDS = (DeliveryKind.KEYS, DeliveryKind.RESHOW)


async def claim(
    db: Database,
    vault: KeyVault,
    owner: str,
    *,
    limit: int,
    lease: timedelta,
    now: datetime | None = None,
) -> list[Job]:
    """Take up to `limit` due deliveries for this worker until the lease runs out."""
    now = now or datetime.now(UTC)
    lease_end = now + lease

    other = aliased(Delivery)
    keys_due = (
        select(other.id)
        .where(
            other.kind.in_(_KEY_KINDS),
            other.status == DeliveryStatus.QUEUED,
            other.next_attempt_at <= now,
        )
        .exists()
    )

    async def work(
        session: AsyncSession,
    ) -> list[tuple[Delivery, Order | None, Product, str, list[tuple[int, bytes]]]]:
        due = (
            select(Delivery.id)
            .where(
                Delivery.status == DeliveryStatus.QUEUED,
                Delivery.next_attempt_at <= now,
                or_(Delivery.lease_expires_at.is_(None), Delivery.lease_expires_at < now),
                # A restock notice waits while any key delivery is due, being sent included
                # (it stays queued until recorded): keys first, always.
                or_(Delivery.kind != DeliveryKind.RESTOCKED, ~keys_due),
            )
            .order_by(Delivery.next_attempt_at, Delivery.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        claimed = (
            await session.scalars(
                update(Delivery)
                .where(Delivery.id.in_(due))
                .values(lease_owner=owner, lease_expires_at=lease_end)
                .returning(Delivery)
                .execution_options(synchronize_session=False, populate_existing=True)
            )
        ).all()
        if not claimed:
            return []
        order_ids = {d.order_id for d in claimed if d.order_id is not None}
        rows = await session.execute(
            select(Order, Product, Buyer.language)
            .join(Product, Product.id == Order.product_id)
            .join(Buyer, Buyer.id == Order.buyer_id)
            .where(Order.id.in_(order_ids))
        )
        context = {order.id: (order, product, language) for order, product, language in rows}
        with_keys = {d.order_id for d in claimed if d.kind in _KEY_KINDS}
        secrets = await allocation.sold_keys(session, [context[o][0] for o in with_keys])
        notices = await _notice_context(session, [d for d in claimed if d.order_id is None])
        return [
            (
                d,
                *(context[d.order_id] if d.order_id is not None else notices[d.id]),
                secrets.get(d.order_id, []) if d.kind in _KEY_KINDS else [],
            )
            for d in claimed
        ]

    claimed = await db.write(work)
    # Decrypt outside the transaction: the write lock is for database work only.
    return [
        Job(
            id=d.id,
            kind=DeliveryKind(d.kind),
            order_id=d.order_id,
            chat_id=d.chat_id,
            attempts=d.attempts,
            language=language,
            product_name=product.name_in(language),
            quantity=order.quantity if order else 0,
            template=product.delivery_template,
            keys=tuple(vault.decrypt(c) for _, c in secrets),
            lease_expires_at=lease_end,
            queued_at=d.created_at,
            key_ids=tuple(k for k, _ in secrets) if order and order.shared_key_id is None else (),
        )
        for d, order, product, language, secrets in claimed
    ]


async def _notice_context(
    session: AsyncSession, notices: list[Delivery]
) -> dict[int, tuple[None, Product, str]]:
    """What a restock notice is about: a product, and a buyer the shop may never have seen."""
    if not notices:
        return {}
    products = await session.scalars(
        select(Product).where(Product.id.in_({d.product_id for d in notices}))
    )
    by_id = {p.id: p for p in products}
    rows = await session.execute(
        select(Buyer.id, Buyer.language).where(Buyer.id.in_({d.chat_id for d in notices}))
    )
    languages = {buyer: language for buyer, language in rows}
    return {d.id: (None, by_id[d.product_id], languages.get(d.chat_id, "en")) for d in notices}


async def renew(
    db: Database, owner: str, ids: list[int], *, lease: timedelta, now: datetime | None = None
) -> set[int]:
    """Extend this worker's leases on deliveries it is still sending; the ids it still holds."""
    if not ids:
        return set()
    lease_end = (now or datetime.now(UTC)) + lease

    async def work(session: AsyncSession) -> set[int]:
        held = await session.scalars(
            update(Delivery)
            .where(
                Delivery.id.in_(ids),
                Delivery.lease_owner == owner,
                Delivery.status == DeliveryStatus.QUEUED,
            )
            .values(lease_expires_at=lease_end)
            .returning(Delivery.id)
            .execution_options(synchronize_session=False)
        )
        return set(held.all())

    return await db.write(work)


async def finish(
    db: Database,
    owner: str,
    done: list[Done],
    *,
    key_message_ttl: timedelta | None,
    now: datetime | None = None,
) -> None:
    """Record the outcome of many sends in one transaction (group commit)."""
    if not done:
        return
    now = now or datetime.now(UTC)

    async def work(session: AsyncSession) -> None:
        ours = and_(
            Delivery.id == bindparam("b_id"),
            Delivery.lease_owner == owner,
            Delivery.status == DeliveryStatus.QUEUED,
        )
        sent = [d for d in done if d.outcome is Outcome.SENT]
        if sent:
            await _executemany(
                session,
                update(Delivery)
                .where(ours)
                .values(
                    status=DeliveryStatus.SENT,
                    message_id=bindparam("b_message"),
                    sent_at=now,
                    attempts=Delivery.attempts + 1,
                    lease_owner=None,
                    lease_expires_at=None,
                ),
                [{"b_id": d.job.id, "b_message": d.message_ids[0]} for d in sent],
            )
            reveals = [
                {
                    "order_id": d.job.order_id,
                    "delivery_id": d.job.id,
                    "how": d.job.kind,
                    "chat_id": d.job.chat_id,
                    "message_id": message_id,
                    "revealed_at": now,
                    "delete_after": now + key_message_ttl if key_message_ttl else None,
                }
                for d in sent
                if d.job.kind in _KEY_KINDS
                for message_id in d.message_ids
            ]
            if reveals:
                await _executemany(session, Reveal.__table__.insert(), reveals)
        retry = [d for d in done if d.outcome is Outcome.RETRY]
        if retry:
            await _executemany(
                session,
                update(Delivery)
                .where(ours)
                .values(
                    next_attempt_at=bindparam("b_at"),
                    last_error=bindparam("b_error"),
                    attempts=Delivery.attempts + bindparam("b_count"),
                    lease_owner=None,
                    lease_expires_at=None,
                ),
                [
                    {
                        "b_id": d.job.id,
                        "b_at": d.retry_at or now,
                        "b_error": (d.error or "")[:200],
                        "b_count": int(d.count_attempt),
                    }
                    for d in retry
                ],
            )
        failed = [d for d in done if d.outcome is Outcome.UNDELIVERABLE]
        if failed:
            await _executemany(
                session,
                update(Delivery)
                .where(ours)
                .values(
                    status=DeliveryStatus.UNDELIVERABLE,
                    last_error=bindparam("b_error"),
                    attempts=Delivery.attempts + 1,
                    lease_owner=None,
                    lease_expires_at=None,
                ),
                [{"b_id": d.job.id, "b_error": (d.error or "")[:200]} for d in failed],
            )

    await db.write(work)


async def _executemany(session: AsyncSession, statement: Any, rows: list[dict[str, Any]]) -> None:
    # Through the connection: one statement, many parameter sets, no ORM bookkeeping.
    connection = await session.connection()
    await connection.execute(statement, rows)


async def expiring(
    db: Database, *, now: datetime | None = None, limit: int = 100
) -> list[Expiring]:
    """Key messages whose time in the chat is up."""

    async def work(session: AsyncSession) -> list[Expiring]:
        rows = await session.execute(
            select(Reveal.id, Reveal.chat_id, Reveal.message_id)
            .where(
                Reveal.delete_after.is_not(None), Reveal.delete_after <= (now or datetime.now(UTC))
            )
            .order_by(Reveal.delete_after)
            .limit(limit)
        )
        return [Expiring(*row) for row in rows]

    return await db.read(work)


async def mark_removed(db: Database, reveal_ids: list[int]) -> None:
    """The key messages are gone from the chat (or can no longer be removed)."""
    if not reveal_ids:
        return

    async def work(session: AsyncSession) -> None:
        await session.execute(
            update(Reveal)
            .where(Reveal.id.in_(reveal_ids))
            .values(delete_after=None)
            .execution_options(synchronize_session=False)
        )

    await db.write(work)
