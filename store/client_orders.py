"""Business clients' orders, paid from the prepaid balance, with Idempotency-Keys.

A client's order goes through the same `orders` and `keys` tables as a chat sale (provider
"balance", buyer `API_BUYER`, `client_id` set), so I1 and I6 and `keyvend check` hold for
it unchanged. Placing an order is one transaction: the idempotency key is recorded, the
balance charged by one conditional UPDATE (`balance - amount >= -credit`, its row count
checked), the keys taken by the same statement a chat sale uses, the ledger written and,
when fulfilled, the client's event and outbox rows queued. Anything short (stock, money)
rolls all of it back. Orders over the client's review threshold wait for an admin.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from store import allocation
from store.audit import audit
from store.buyers import dialect_insert
from store.clients import Caller, ledger_row, new_token_pair
from store.crypto import KeyVault
from store.db import Database
from store.errors import InvalidInput, NotFound, OutOfStock, ProductInactive, StoreError
from store.models import (
    API_BUYER,
    BALANCE_PROVIDER,
    ApiRequest,
    Client,
    ClientDelivery,
    ClientEvent,
    DeliveryStatus,
    Download,
    Key,
    KeyStatus,
    Order,
    OrderStatus,
    Product,
    ProductKind,
)
from store.money import to_major

MAX_QUANTITY = 10_000
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, as Stripe allows
_INT32 = 2**31 - 1  # orders.amount_minor
EVENT_FULFILLED = "order.fulfilled"
# The statuses in which the order's keys are the client's: only then may a link serve them.
HOLDS_KEYS = (OrderStatus.FULFILLED, OrderStatus.DISPUTED)


class IdempotencyConflict(StoreError):
    """An Idempotency-Key already used for a different request."""


class InsufficientBalance(StoreError):
    """The order costs more than the balance and the credit limit allow."""


class NotInReview(StoreError):
    """The order is not waiting for an admin's decision."""


@dataclass(frozen=True, slots=True)
class Offer:
    sku: str
    name: str
    price_minor: int
    currency: str
    available: int


@dataclass(frozen=True, slots=True)
class ClientOrder:
    id: int
    sku: str
    quantity: int
    status: OrderStatus
    amount_minor: int
    currency: str
    created_at: datetime
    fulfilled_at: datetime | None
    download_token: str | None = None  # a live one-time link, for a fulfilled order
    download_expires_at: datetime | None = None

    def __repr__(self) -> str:  # the link token is a credential
        return f"ClientOrder(id={self.id}, status={self.status})"


@dataclass(frozen=True, slots=True)
class Placed:
    order: ClientOrder
    replayed: bool  # an earlier request with the same Idempotency-Key made it


# ---------------------------------------------------------------- catalogue and orders


async def offers(db: Database) -> list[Offer]:
    """The products a client can order (unique keys, on sale) with the keys available."""

    async def work(session: AsyncSession) -> list[Offer]:
        available = (
            select(func.count())
            .where(Key.product_id == Product.id, Key.status == KeyStatus.AVAILABLE)
            .scalar_subquery()
        )
        rows = await session.execute(
            select(Product, available)
            .where(Product.active.is_(True), Product.kind == ProductKind.UNIQUE)
            .order_by(Product.sku)
        )
        return [Offer(p.sku, p.name, p.price_minor, p.currency, n) for p, n in rows]

    return await db.read(work)


def request_hash(sku: str, quantity: int) -> bytes:
    """What makes two order requests "the same" for an Idempotency-Key."""
    return hashlib.sha256(json.dumps([sku, quantity]).encode()).digest()


async def place_order(
    db: Database,
    vault: KeyVault,
    caller: Caller,
    idempotency_key: str,
    sku: str,
    quantity: int,
    *,
    download_ttl: timedelta,
    email: bool,
    now: datetime | None = None,
) -> Placed:
    """Order `quantity` keys of `sku`, paid from the balance; safe to repeat with one key.

    Raises IdempotencyConflict, NotFound, ProductInactive, InvalidInput, InsufficientBalance
    or OutOfStock; in every case nothing is charged, taken or remembered.
    """
    if not _KEY.match(idempotency_key):
        raise InvalidInput("Idempotency-Key must be 1-255 printable ASCII characters")
    if not 1 <= quantity <= MAX_QUANTITY:
        raise InvalidInput(f"quantity must be between 1 and {MAX_QUANTITY}")
    digest = request_hash(sku, quantity)
    return await db.write(
        _place,
        vault,
        caller.id,
        idempotency_key,
        digest,
        sku,
        quantity,
        download_ttl,
        email,
        now or datetime.now(UTC),
    )


async def _place(
    session: AsyncSession,
    vault: KeyVault,
    client_id: int,
    key: str,
    digest: bytes,
    sku: str,
    quantity: int,
    ttl: timedelta,
    email: bool,
    now: datetime,
) -> Placed:
    # First the key: a concurrent request with the same key waits here for this one.
    request_id = await session.scalar(
        dialect_insert(session)(ApiRequest)
        .values(client_id=client_id, key=key, request_hash=digest, created_at=now)
        .on_conflict_do_nothing(index_elements=[ApiRequest.client_id, ApiRequest.key])
        .returning(ApiRequest.id)
    )
    if request_id is None:
        earlier = await session.scalar(
            select(ApiRequest).where(ApiRequest.client_id == client_id, ApiRequest.key == key)
        )
        if earlier.request_hash != digest:
            raise IdempotencyConflict("this Idempotency-Key was used for a different request")
        order = await session.get(Order, earlier.order_id)
        return Placed(await _client_order(session, vault, order, ttl, now, issue=False), True)
    product = await session.scalar(select(Product).where(Product.sku == sku))
    if product is None or product.kind != ProductKind.UNIQUE:
        raise NotFound(f"no product {sku}")
    if not product.active:
        raise ProductInactive(sku)
    amount = product.price_minor * quantity
    if amount > _INT32:
        raise InvalidInput("the order's total is too large: order fewer keys at a time")
    client = await session.get(Client, client_id)
    if client.currency != product.currency:
        raise InvalidInput(
            f"{sku} is priced in {product.currency.upper()}, the balance is in "
            f"{client.currency.upper()}"
        )
    balance = await session.scalar(
        update(Client)
        .where(
            Client.id == client_id,
            Client.disabled.is_(False),
            Client.balance_minor - amount >= -Client.credit_minor,
        )
        .values(balance_minor=Client.balance_minor - amount)
        .returning(Client.balance_minor)
        .execution_options(synchronize_session=False)
    )
    if balance is None:
        raise InsufficientBalance(
            f"the order costs {to_major(amount, product.currency)} "
            f"{product.currency.upper()}, more than the balance and credit allow"
        )
    review = client.review_over is not None and quantity > client.review_over
    order = Order(
        buyer_id=API_BUYER,
        client_id=client_id,
        product_id=product.id,
        quantity=quantity,
        amount_minor=amount,
        currency=product.currency,
        provider=BALANCE_PROVIDER,
        status=OrderStatus.REVIEW if review else OrderStatus.FULFILLED,
        reserved_until=now,
        check_after=now,
        created_at=now,
        paid_at=now,
        paid_amount_minor=amount,
        paid_currency=product.currency,
        fulfilled_at=None if review else now,
        closed_at=None if review else now,
    )
    session.add(order)
    await session.flush()
    got = await allocation.take_keys(
        session,
        product.id,
        order.id,
        quantity,
        status=KeyStatus.RESERVED if review else KeyStatus.SOLD,
    )
    if got < quantity:
        raise OutOfStock(got)
    session.add(ledger_row(client_id, "order", -amount, balance, order.id, now))
    await session.execute(
        update(ApiRequest)
        .where(ApiRequest.id == request_id)
        .values(order_id=order.id)
        .execution_options(synchronize_session=False)
    )
    if not review:
        await _queue_fulfilled(session, client, order, email, now)
    return Placed(await _client_order(session, vault, order, ttl, now, issue=not review), False)


async def _queue_fulfilled(
    session: AsyncSession, client: Client, order: Order, email: bool, now: datetime
) -> None:
    """The client's `order.fulfilled` event, and its webhook call and e-mail in the outbox."""
    event = ClientEvent(
        client_id=client.id, order_id=order.id, type=EVENT_FULFILLED, created_at=now
    )
    session.add(event)
    await session.flush()
    channels = []
    if client.webhook_url:
        channels.append("webhook")
    if email and client.email:
        channels.append("email")
    for channel in channels:
        session.add(
            ClientDelivery(
                event_id=event.id,
                channel=channel,
                status=DeliveryStatus.QUEUED,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )


async def order_status(
    db: Database,
    vault: KeyVault,
    caller: Caller,
    order_id: int,
    *,
    download_ttl: timedelta,
    new_link: bool = False,
    now: datetime | None = None,
) -> ClientOrder:
    """One of the caller's orders; once fulfilled, with a live one-time download link.

    The live link is shown again until it is used or expires; then (or with `new_link`,
    which also ends the live one) a new link is issued.
    """
    moment = now or datetime.now(UTC)

    async def look(session: AsyncSession) -> ClientOrder:
        order = await _callers_order(session, caller, order_id)
        return await _client_order(session, vault, order, download_ttl, moment, issue=False)

    view = await db.read(look)
    if view.status not in HOLDS_KEYS:
        if new_link:
            raise NotInReview(f"order {order_id} has no keys to download")
        return view
    if view.download_token is not None and not new_link:
        return view

    async def issue(session: AsyncSession) -> ClientOrder:
        order = await _callers_order(session, caller, order_id, lock=True)
        return await _client_order(
            session, vault, order, download_ttl, moment, issue=True, replace=new_link
        )

    return await db.write(issue)


async def _callers_order(
    session: AsyncSession, caller: Caller, order_id: int, *, lock: bool = False
) -> Order:
    query = select(Order).where(Order.id == order_id, Order.client_id == caller.id)
    order = await session.scalar(query.with_for_update() if lock else query)
    if order is None:
        raise NotFound(f"no order {order_id}")
    return order


async def _client_order(
    session: AsyncSession,
    vault: KeyVault,
    order: Order,
    ttl: timedelta,
    now: datetime,
    *,
    issue: bool,
    replace: bool = False,
) -> ClientOrder:
    sku = await session.scalar(select(Product.sku).where(Product.id == order.product_id))
    link: tuple[str | None, datetime | None] = (None, None)
    if order.status in HOLDS_KEYS:
        live = await session.scalar(
            select(Download)
            .where(
                Download.order_id == order.id,
                Download.used_at.is_(None),
                Download.expires_at > now,
            )
            .order_by(Download.id.desc())
            .limit(1)
        )
        if live is not None and replace:
            # One live link per order: a new one ends the old.
            await session.execute(
                update(Download)
                .where(Download.order_id == order.id, Download.used_at.is_(None))
                .values(expires_at=now)
                .execution_options(synchronize_session=False)
            )
            live = None
        if live is not None:
            link = (vault.decrypt(live.token_ciphertext), live.expires_at)
        elif issue:
            token, digest = new_token_pair("dl_")
            session.add(
                Download(
                    order_id=order.id,
                    token_hash=digest,
                    token_ciphertext=vault.encrypt(token),
                    created_at=now,
                    expires_at=now + ttl,
                )
            )
            link = (token, now + ttl)
    return ClientOrder(
        id=order.id,
        sku=sku,
        quantity=order.quantity,
        status=OrderStatus(order.status),
        amount_minor=order.amount_minor,
        currency=order.currency,
        created_at=order.created_at,
        fulfilled_at=order.fulfilled_at,
        download_token=link[0],
        download_expires_at=link[1],
    )


# ---------------------------------------------------------------- the review queue


async def decide_review(
    db: Database, order_id: int, *, approve: bool, email: bool, now: datetime | None = None
) -> OrderStatus:
    """An admin's decision on a client order in review: fulfil it, or refund the balance."""
    moment = now or datetime.now(UTC)

    async def work(session: AsyncSession) -> OrderStatus:
        order = await session.scalar(
            select(Order)
            .where(Order.id == order_id, Order.client_id.is_not(None))
            .with_for_update()
        )
        if order is None:
            raise NotFound(f"no client order {order_id}")
        if order.status != OrderStatus.REVIEW:
            raise NotInReview(f"order {order_id} is {order.status}, not in review")
        client = await session.scalar(
            select(Client).where(Client.id == order.client_id).with_for_update()
        )
        if approve:
            held = await allocation.sell_reserved(session, order.id)
            if held < order.quantity:
                raise OutOfStock(held)  # cannot happen: the reservation never lapses
            order.status = OrderStatus.FULFILLED
            order.fulfilled_at = moment
            await _queue_fulfilled(session, client, order, email, moment)
        else:
            await allocation.release(session, order.id)
            client.balance_minor += order.amount_minor
            session.add(
                ledger_row(
                    client.id, "refund", order.amount_minor, client.balance_minor, order.id, moment
                )
            )
            order.status = OrderStatus.REFUNDED
        order.closed_at = moment
        session.add(
            audit(
                None, "client.review", f"order {order_id} {'approved' if approve else 'rejected'}"
            )
        )
        return OrderStatus(order.status)

    return await db.write(work)
