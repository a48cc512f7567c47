"""The clients' events and their outbox: webhook calls and e-mails, claimed with leases.

Every event a client is told about (`order.fulfilled`) is a row of `client_events`, which
`/api/v1/events` pages through, so a client that missed a callback can catch up. Each
channel that carries it (the client's webhook, its e-mail) is a `client_deliveries` row,
claimed like the chat outbox (store/deliveries.py): a lease, `FOR UPDATE SKIP LOCKED` on
PostgreSQL, outcomes written back only by the worker that still holds the lease, so
several instances share the queue and a dead one's claims lapse and are taken over.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from store.db import Database
from store.models import (
    Client,
    ClientDelivery,
    ClientEvent,
    DeliveryStatus,
    Order,
    OrderStatus,
    Product,
)


@dataclass(frozen=True, slots=True)
class EventView:
    """An event as a client sees it (no keys: the order's status, never its contents)."""

    id: int
    type: str
    created_at: datetime
    order_id: int
    sku: str
    quantity: int
    status: OrderStatus

    def payload(self) -> dict:
        """The JSON body of a webhook call and of an entry in /api/v1/events."""
        return {
            "id": self.id,
            "type": self.type,
            "created": int(self.created_at.timestamp()),
            "data": {
                "order": {
                    "id": self.order_id,
                    "sku": self.sku,
                    "quantity": self.quantity,
                    "status": self.status.value,
                }
            },
        }


@dataclass(frozen=True, slots=True)
class Dispatch:
    """A claimed outbox row with where it goes."""

    id: int
    channel: str  # "webhook" or "email"
    attempts: int
    event: EventView
    client_name: str
    webhook_url: str | None
    webhook_secret: str | None
    email: str | None

    def __repr__(self) -> str:  # the signing secret stays out of logs
        return f"Dispatch(id={self.id}, channel={self.channel}, event={self.event.id})"


class Outcome(StrEnum):
    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Done:
    dispatch: Dispatch
    outcome: Outcome
    retry_at: datetime | None = None
    error: str | None = None


def _event_query():
    return (
        select(ClientEvent, Order.quantity, Order.status, Product.sku)
        .join(Order, Order.id == ClientEvent.order_id)
        .join(Product, Product.id == Order.product_id)
    )


def _event_view(event: ClientEvent, quantity: int, status: str, sku: str) -> EventView:
    return EventView(
        event.id, event.type, event.created_at, event.order_id, sku, quantity, OrderStatus(status)
    )


async def events(
    db: Database, client_id: int, *, after: int = 0, limit: int = 100
) -> list[EventView]:
    """A client's events after the one with id `after`, oldest first."""

    async def work(session: AsyncSession) -> list[EventView]:
        rows = await session.execute(
            _event_query()
            .where(ClientEvent.client_id == client_id, ClientEvent.id > after)
            .order_by(ClientEvent.id)
            .limit(limit)
        )
        return [_event_view(*row) for row in rows]

    return await db.read(work)


async def claim(
    db: Database, owner: str, *, limit: int, lease: timedelta, now: datetime | None = None
) -> list[Dispatch]:
    """Take up to `limit` due outbox rows for this worker until the lease runs out."""
    now = now or datetime.now(UTC)

    async def work(session: AsyncSession) -> list[Dispatch]:
        due = (
            select(ClientDelivery.id)
            .where(
                ClientDelivery.status == DeliveryStatus.QUEUED,
                ClientDelivery.next_attempt_at <= now,
                or_(
                    ClientDelivery.lease_expires_at.is_(None),
                    ClientDelivery.lease_expires_at < now,
                ),
            )
            .order_by(ClientDelivery.next_attempt_at, ClientDelivery.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        claimed = (
            await session.scalars(
                update(ClientDelivery)
                .where(ClientDelivery.id.in_(due))
                .values(lease_owner=owner, lease_expires_at=now + lease)
                .returning(ClientDelivery)
                .execution_options(synchronize_session=False, populate_existing=True)
            )
        ).all()
        if not claimed:
            return []
        rows = await session.execute(
            _event_query()
            .add_columns(Client)
            .join(Client, Client.id == ClientEvent.client_id)
            .where(ClientEvent.id.in_({d.event_id for d in claimed}))
        )
        found = {row[0].id: (_event_view(*row[:4]), row[4]) for row in rows}
        dispatches = []
        for d in claimed:
            event, client = found[d.event_id]
            dispatches.append(
                Dispatch(
                    d.id,
                    d.channel,
                    d.attempts,
                    event,
                    client.name,
                    client.webhook_url,
                    client.webhook_secret,
                    client.email,
                )
            )
        return dispatches

    return await db.write(work)


async def finish(
    db: Database, owner: str, done: list[Done], *, now: datetime | None = None
) -> None:
    """Record how each send went, in one transaction, where this worker still holds the lease."""
    if not done:
        return
    now = now or datetime.now(UTC)

    async def work(session: AsyncSession) -> None:
        for d in done:
            values: dict[str, object] = {
                "attempts": ClientDelivery.attempts + 1,
                "lease_owner": None,
                "lease_expires_at": None,
            }
            if d.outcome is Outcome.SENT:
                values.update(status=DeliveryStatus.SENT, sent_at=now, last_error=None)
            elif d.outcome is Outcome.RETRY:
                values.update(next_attempt_at=d.retry_at or now, last_error=(d.error or "")[:200])
            else:
                values.update(status=DeliveryStatus.UNDELIVERABLE, last_error=(d.error or "")[:200])
            await session.execute(
                update(ClientDelivery)
                .where(
                    ClientDelivery.id == d.dispatch.id,
                    ClientDelivery.lease_owner == owner,
                    ClientDelivery.status == DeliveryStatus.QUEUED,
                )
                .values(**values)
                .execution_options(synchronize_session=False)
            )

    await db.write(work)
