"""Bench data: a stocked product, and orders in bulk in the states a benchmark starts from.

The product and its keys go through the real store (`catalogue.add_product`,
`inventory.restock`: encrypted, deduplicated). Orders are written in bulk with SQL through
the store's own tables and transaction boundary, because the real checkout costs two write
transactions and a Stripe call each (about 90 orders/s here), which would spend the whole
time budget on setup. Each bulk state is the one the real code leaves behind, checked by
`keyvend check` at the end of a run:

- `pending_orders`: what `orders.checkout` leaves: a pending order per new buyer, one key
  reserved, and a real Checkout Session opened in FakeStripe through the real
  `StripeGateway` (the SDK over HTTP), its id recorded as the order's provider_ref.
- `queued_deliveries`: what `orders.fulfil` leaves: a fulfilled order, its key sold and a
  `keys` delivery queued in the outbox.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bench.harness import SKU, Signed
from bot.stripe_gateway import StripeGateway
from store import catalogue, inventory
from store.crypto import KeyVault
from store.db import Database
from store.models import (
    Buyer,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    Key,
    KeyStatus,
    Order,
    OrderStatus,
    PaymentEvent,
)
from store.payments import CheckoutRequest
from store.reconciliation import CHECK_GRACE
from tests.fakes.stripe import FakeStripe

PRICE = "9.99"
PRICE_MINOR = 999
# Longer than Stripe's 30-minute minimum with room to spare: setup takes a while.
CHECKOUT_TTL = timedelta(minutes=45)
TEMPLATE = "Redeem at example.com/redeem — order {order}"
_ROWS_PER_STATEMENT = 5_000


async def stocked_product(db: Database, vault: KeyVault, keys: int) -> int:
    """The bench product with `keys` fresh keys, imported the way an admin imports them."""
    product = await catalogue.add_product(
        db, SKU, "Bench Game", PRICE, "usd", delivery_template=TEMPLATE
    )
    run = secrets.token_hex(4).upper()
    lines = "\n".join(f"{SKU}-{run}-{i:07d}-{secrets.token_hex(6).upper()}" for i in range(keys))
    await inventory.restock(db, vault, SKU, inventory.parse_keys(lines), source="bench")
    return product.id


def _chunks(rows: list, size: int = _ROWS_PER_STATEMENT):
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


async def _new_buyers(session: AsyncSession, buyer_ids: range, now: datetime) -> None:
    connection = await session.connection()
    rows = [
        {"id": b, "language": "en", "blacklisted": False, "first_seen": now, "last_seen": now}
        for b in buyer_ids
    ]
    for chunk in _chunks(rows):
        await connection.execute(insert(Buyer), chunk)


async def _insert_orders(session: AsyncSession, rows: list[dict]) -> list[int]:
    connection = await session.connection()
    ids: list[int] = []
    for chunk in _chunks(rows):
        result = await connection.execute(
            insert(Order).returning(Order.id, sort_by_parameter_order=True), chunk
        )
        ids += [row[0] for row in result]
    return ids


async def _give_keys(
    session: AsyncSession, product_id: int, order_ids: list[int], status: KeyStatus
) -> None:
    """The oldest available keys, one per order, in `status`: what allocation would pick."""
    connection = await session.connection()
    keys = (
        await session.scalars(
            select(Key.id)
            .where(Key.product_id == product_id, Key.status == KeyStatus.AVAILABLE)
            .order_by(Key.id)
            .limit(len(order_ids))
        )
    ).all()
    if len(keys) < len(order_ids):
        raise RuntimeError(f"bench product has {len(keys)} keys for {len(order_ids)} orders")
    statement = (
        update(Key)
        .where(Key.id == bindparam("b_key"))
        .values(status=status, order_id=bindparam("b_order"))
    )
    rows = [{"b_key": k, "b_order": o} for k, o in zip(keys, order_ids, strict=True)]
    for chunk in _chunks(rows):
        await connection.execute(statement, chunk)


def _order_row(product_id: int, buyer_id: int, now: datetime, status: OrderStatus) -> dict:
    expires = now + CHECKOUT_TTL
    return {
        "buyer_id": buyer_id,
        "product_id": product_id,
        "quantity": 1,
        "amount_minor": PRICE_MINOR,
        "currency": "usd",
        "provider": "stripe",
        "status": status,
        "reserved_until": expires,
        "check_after": expires + CHECK_GRACE,
        "created_at": now,
    }


async def pending_orders(
    db: Database, stripe: FakeStripe, product_id: int, count: int, *, first_buyer: int
) -> list[tuple[int, str]]:
    """`count` checkouts as the buyer left them, unpaid: [(order id, Checkout Session id)]."""
    now = datetime.now(UTC)
    buyers = range(first_buyer, first_buyer + count)

    async def open_orders(session: AsyncSession) -> list[int]:
        await _new_buyers(session, buyers, now)
        ids = await _insert_orders(
            session, [_order_row(product_id, b, now, OrderStatus.PENDING) for b in buyers]
        )
        await _give_keys(session, product_id, ids, KeyStatus.RESERVED)
        return ids

    order_ids = await db.write(open_orders)
    sessions = await open_checkouts(stripe, order_ids, now + CHECKOUT_TTL)

    async def attach(session: AsyncSession) -> None:
        connection = await session.connection()
        statement = (
            update(Order)
            .where(Order.id == bindparam("b_order"))
            .values(provider_ref=bindparam("b_ref"), checkout_url=bindparam("b_url"))
        )
        rows = [
            {"b_order": o, "b_ref": ref, "b_url": url}
            for o, (ref, url) in zip(order_ids, sessions, strict=True)
        ]
        for chunk in _chunks(rows):
            await connection.execute(statement, chunk)

    await db.write(attach)
    return [(o, ref) for o, (ref, _) in zip(order_ids, sessions, strict=True)]


async def open_checkouts(
    stripe: FakeStripe, order_ids: list[int], expires_at: datetime
) -> list[tuple[str, str]]:
    """A Checkout Session per order, opened by keyvend's own StripeGateway against FakeStripe."""
    gateway = StripeGateway(
        stripe.api_key, api_base=stripe.url, success_url=lambda o: f"https://t.me/bench?start={o}"
    )
    room = asyncio.Semaphore(16)

    async def one(order_id: int) -> tuple[str, str]:
        async with room:
            started = await gateway.start_checkout(
                CheckoutRequest(
                    order_id=order_id,
                    product_name="Bench Game",
                    quantity=1,
                    unit_amount_minor=PRICE_MINOR,
                    currency="usd",
                    expires_at=expires_at,
                )
            )
            return started.ref, started.url

    return list(await asyncio.gather(*(one(o) for o in order_ids)))


def paid_events(stripe: FakeStripe, session_ids: list[str]) -> list[Signed]:
    """The buyer pays each session; Stripe's signed `checkout.session.completed` for each.

    Signed now: Stripe signatures are good for 300 s, so sign right before sending.
    """
    events = []
    for session_id in session_ids:
        stripe.pay(session_id)
        events.append(Signed.of(*stripe.signed(stripe.completed_event(session_id))))
    return events


async def queued_deliveries(
    db: Database, product_id: int, count: int, *, first_buyer: int
) -> range:
    """`count` paid, fulfilled orders whose key messages wait in the outbox; returns the chats."""
    now = datetime.now(UTC)
    buyers = range(first_buyer, first_buyer + count)

    async def fulfilled(session: AsyncSession) -> None:
        await _new_buyers(session, buyers, now)
        rows = []
        for b in buyers:
            row = _order_row(product_id, b, now, OrderStatus.FULFILLED)
            row.update(
                paid_at=now,
                paid_amount_minor=PRICE_MINOR,
                paid_currency="usd",
                payment_ref=f"pi_bench_{b}",
                fulfilled_at=now,
                closed_at=now,
            )
            rows.append(row)
        ids = await _insert_orders(session, rows)
        await _give_keys(session, product_id, ids, KeyStatus.SOLD)
        connection = await session.connection()
        events = [
            {
                "provider": "stripe",
                "event_id": f"evt_bench_{o}",
                "type": "checkout.session.completed",
                "order_id": o,
                "received_at": now,
            }
            for o in ids
        ]
        deliveries = [
            {
                "order_id": o,
                "kind": DeliveryKind.KEYS,
                "chat_id": b,
                "status": DeliveryStatus.QUEUED,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for o, b in zip(ids, buyers, strict=True)
        ]
        for chunk in _chunks(events):
            await connection.execute(insert(PaymentEvent), chunk)
        for chunk in _chunks(deliveries):
            await connection.execute(insert(Delivery), chunk)

    await db.write(fulfilled)
    return buyers
