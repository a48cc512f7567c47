"""Business clients: accounts and tokens, the prepaid balance, and orders paid from it.

A client orders keys over the HTTP API. Its order goes through the same `orders` and
`keys` tables as a chat sale (provider "balance", buyer `API_BUYER`, `client_id` set), so
I1 and I6 and `keyvend check` hold for it unchanged. Placing an order is one transaction:
the idempotency key is recorded, the balance charged by one conditional UPDATE
(`balance - amount >= -credit`, its row count checked), the keys taken by the same
statement a chat sale uses, the ledger written and, when fulfilled, the client's event
and outbox rows queued. Anything short (stock, money) rolls all of it back.

Tokens are 32 random bytes (256 bits) from `secrets`, shown once and stored as their
SHA-256. A slow password hash (bcrypt, scrypt, argon2) makes guessing a *low-entropy*
password expensive; nobody can enumerate 2^256 tokens however cheap each guess is, so a
single SHA-256 is as safe here and keeps authentication one indexed lookup per request.
The same holds for download-link tokens.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from store import allocation
from store.audit import audit
from store.buyers import dialect_insert
from store.crypto import KeyVault
from store.db import Database
from store.errors import InvalidInput, NotFound, OutOfStock, ProductInactive, StoreError
from store.models import (
    API_BUYER,
    BALANCE_PROVIDER,
    ApiRequest,
    Buyer,
    Client,
    ClientDelivery,
    ClientEvent,
    DeliveryStatus,
    Download,
    Key,
    KeyStatus,
    LedgerEntry,
    Order,
    OrderStatus,
    Product,
    ProductKind,
)
from store.money import check_currency, exponent, to_major

MAX_QUANTITY = 10_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, as Stripe allows
_INT32 = 2**31 - 1  # orders.amount_minor
EVENT_FULFILLED = "order.fulfilled"
_HOLDS_KEYS = (OrderStatus.FULFILLED, OrderStatus.DISPUTED)


class IdempotencyConflict(StoreError):
    """An Idempotency-Key already used for a different request."""


class InsufficientBalance(StoreError):
    """The order costs more than the balance and the credit limit allow."""


class DownloadRefused(StoreError):
    """A download link that is unknown, used, expired or not the caller's."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"download link {reason}")
        self.reason = reason  # "unknown", "used", "expired"


class NotInReview(StoreError):
    """The order is not waiting for an admin's decision."""


@dataclass(frozen=True, slots=True)
class ClientView:
    id: int
    name: str
    currency: str
    balance_minor: int
    credit_minor: int
    review_over: int | None
    webhook_url: str | None
    email: str | None
    disabled: bool

    def money(self, minor: int) -> str:
        return f"{to_major(minor, self.currency)} {self.currency.upper()}"


@dataclass(frozen=True, slots=True)
class NewClient:
    client: ClientView
    token: str
    webhook_secret: str | None

    def __repr__(self) -> str:
        return f"NewClient({self.client.name})"


@dataclass(frozen=True, slots=True)
class Caller:
    """The client a request authenticated as."""

    id: int
    name: str


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


@dataclass(frozen=True, slots=True)
class Sheet:
    """An order's keys, for the spreadsheet a download or an e-mail carries."""

    order_id: int
    sku: str
    product_name: str
    keys: tuple[str, ...]

    def __repr__(self) -> str:  # never the keys
        return f"Sheet(order_id={self.order_id}, keys={len(self.keys)})"


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _new_token(prefix: str) -> tuple[str, bytes]:
    token = prefix + secrets.token_urlsafe(32)
    return token, token_hash(token)


def _amount(text: str | None, currency: str, what: str) -> int:
    """A non-negative amount such as "100.00" in minor units of `currency`."""
    if text is None:
        return 0
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise InvalidInput(f"{what} {text!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise InvalidInput(f"{what} must be zero or more")
    minor = value.scaleb(exponent(currency))
    if minor != minor.to_integral_value():
        raise InvalidInput(f"{currency.upper()} has {exponent(currency)} decimal places")
    if minor > 10**15:
        raise InvalidInput(f"{what} is too large")
    return int(minor)


def _check_webhook(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"webhook URL {url!r} is not an http(s) address")
    return url


def _view(client: Client) -> ClientView:
    return ClientView(
        id=client.id,
        name=client.name,
        currency=client.currency,
        balance_minor=client.balance_minor,
        credit_minor=client.credit_minor,
        review_over=client.review_over,
        webhook_url=client.webhook_url,
        email=client.email,
        disabled=client.disabled,
    )


# ---------------------------------------------------------------- accounts


async def add_client(
    db: Database,
    name: str,
    *,
    currency: str = "usd",
    balance: str | None = None,
    credit: str | None = None,
    webhook_url: str | None = None,
    email: str | None = None,
    review_over: int | None = None,
    admin_id: int | None = None,
    now: datetime | None = None,
) -> NewClient:
    """Create a client; its token (and webhook signing secret) are only ever returned here."""
    if not _NAME.match(name):
        raise InvalidInput(
            "client name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    currency = check_currency(currency)
    balance_minor = _amount(balance, currency, "balance")
    credit_minor = _amount(credit, currency, "credit")
    webhook_url = _check_webhook(webhook_url)
    if email is not None and not _EMAIL.match(email):
        raise InvalidInput(f"{email!r} is not an e-mail address")
    if review_over is not None and review_over < 1:
        raise InvalidInput("--review-over must be at least 1")
    token, digest = _new_token("kv_")
    signing = "whsec_" + secrets.token_urlsafe(32) if webhook_url else None
    moment = now or datetime.now(UTC)

    async def work(session: AsyncSession) -> ClientView:
        if await session.scalar(select(Client.id).where(Client.name == name)) is not None:
            raise InvalidInput(f"a client named {name} exists already")
        await session.execute(
            dialect_insert(session)(Buyer)
            .values(
                id=API_BUYER, language="en", blacklisted=False, first_seen=moment, last_seen=moment
            )
            .on_conflict_do_nothing(index_elements=[Buyer.id])
        )
        client = Client(
            name=name,
            token_hash=digest,
            currency=currency,
            balance_minor=balance_minor,
            credit_minor=credit_minor,
            review_over=review_over,
            webhook_url=webhook_url,
            webhook_secret=signing,
            email=email,
            disabled=False,
            created_at=moment,
        )
        session.add(client)
        await session.flush()
        if balance_minor:
            session.add(_ledger(client.id, "topup", balance_minor, balance_minor, None, moment))
        session.add(audit(admin_id, "client.add", name))
        return _view(client)

    try:
        view = await db.write(work)
    except IntegrityError:
        raise InvalidInput(f"a client named {name} exists already") from None
    return NewClient(view, token, signing)


async def list_clients(db: Database) -> list[ClientView]:
    async def work(session: AsyncSession) -> list[ClientView]:
        return [_view(c) for c in await session.scalars(select(Client).order_by(Client.name))]

    return await db.read(work)


async def topup(
    db: Database,
    name: str,
    amount: str,
    *,
    admin_id: int | None = None,
    now: datetime | None = None,
) -> ClientView:
    """Add money to a client's balance (a ledger row says when and how much)."""

    async def work(session: AsyncSession) -> ClientView:
        client = await _by_name(session, name, lock=True)
        minor = _amount(amount, client.currency, "amount")
        if minor == 0:
            raise InvalidInput("amount must be more than zero")
        client.balance_minor += minor
        moment = now or datetime.now(UTC)
        session.add(_ledger(client.id, "topup", minor, client.balance_minor, None, moment))
        session.add(audit(admin_id, "client.topup", f"{name} {minor}"))
        return _view(client)

    return await db.write(work)


async def new_token(db: Database, name: str, *, admin_id: int | None = None) -> str:
    """Issue a new token for a client; the old one stops working at once."""
    token, digest = _new_token("kv_")

    async def work(session: AsyncSession) -> None:
        client = await _by_name(session, name, lock=True)
        client.token_hash = digest
        session.add(audit(admin_id, "client.token", name))

    await db.write(work)
    return token


async def disable(db: Database, name: str, *, admin_id: int | None = None) -> ClientView:
    """Refuse the client's token from now on (its orders and balance stay)."""

    async def work(session: AsyncSession) -> ClientView:
        client = await _by_name(session, name, lock=True)
        client.disabled = True
        session.add(audit(admin_id, "client.disable", name))
        return _view(client)

    return await db.write(work)


async def _by_name(session: AsyncSession, name: str, *, lock: bool = False) -> Client:
    query = select(Client).where(Client.name == name)
    client = await session.scalar(query.with_for_update() if lock else query)
    if client is None:
        raise NotFound(f"no client named {name}")
    return client


def _ledger(
    client_id: int, kind: str, amount: int, after: int, order_id: int | None, now: datetime
) -> LedgerEntry:
    return LedgerEntry(
        client_id=client_id,
        kind=kind,
        amount_minor=amount,
        balance_after_minor=after,
        order_id=order_id,
        created_at=now,
    )


async def authenticate(db: Database, token: str) -> Caller | None:
    """The enabled client holding this token, or None."""

    async def work(session: AsyncSession) -> Caller | None:
        row = (
            await session.execute(
                select(Client.id, Client.name).where(
                    Client.token_hash == token_hash(token), Client.disabled.is_(False)
                )
            )
        ).first()
        return None if row is None else Caller(*row)

    return await db.read(work)


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
    session.add(_ledger(client_id, "order", -amount, balance, order.id, now))
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
    if view.status not in _HOLDS_KEYS:
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
    if order.status in _HOLDS_KEYS:
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
            token, digest = _new_token("dl_")
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


# ---------------------------------------------------------------- one-time downloads


async def take_download(
    db: Database,
    vault: KeyVault,
    token: str,
    *,
    ip: str,
    caller: Caller | None = None,
    now: datetime | None = None,
) -> Sheet:
    """Use a one-time link: the order's keys, once. Every attempt is audited with the IP.

    A caller that authenticated as another client is refused as if the link were unknown,
    and the link stays unused. Raises DownloadRefused.
    """
    moment = now or datetime.now(UTC)

    async def work(session: AsyncSession) -> tuple[str, Sheet | None, list[bytes]]:
        row = (
            await session.execute(
                select(Download, Order)
                .join(Order, Order.id == Download.order_id)
                .where(Download.token_hash == token_hash(token))
            )
        ).first()
        if row is None:
            session.add(audit(None, "api.download", f"unknown link from {ip}: refused"))
            return "unknown", None, []
        download, order = row
        reason = None
        if caller is not None and order.client_id != caller.id:
            reason = "unknown"
        elif download.used_at is not None:
            reason = "used"
        elif download.expires_at <= moment or order.status not in _HOLDS_KEYS:
            reason = "expired"  # a refunded order's link ends with it
        if reason is None:
            taken = await session.execute(
                update(Download)
                .where(Download.id == download.id, Download.used_at.is_(None))
                .values(used_at=moment, used_ip=ip[:45])
                .execution_options(synchronize_session=False)
            )
            if taken.rowcount != 1:
                reason = "used"
        outcome = "served" if reason is None else f"refused ({reason})"
        session.add(
            audit(
                None,
                "api.download",
                f"order {order.id} link {download.id} from {ip}: {outcome}",
            )
        )
        if reason is not None:
            return reason, None, []
        product = await session.get(Product, order.product_id)
        found = await allocation.ciphertexts(session, [order])
        return "served", Sheet(order.id, product.sku, product.name, ()), found[order.id]

    reason, sheet, ciphertexts = await db.write(work)
    if sheet is None:
        raise DownloadRefused(reason)
    # Decrypt outside the transaction (the write lock is for database work only) and off
    # the event loop: 10,000 keys would stall every other request for tens of milliseconds.
    return await _decrypted(vault, sheet, ciphertexts)


async def order_sheet(db: Database, vault: KeyVault, order_id: int) -> Sheet:
    """An order's keys for its e-mail (the outbox worker's use)."""

    async def work(session: AsyncSession) -> tuple[Sheet, list[bytes]]:
        order = await session.get(Order, order_id)
        if order is None:
            raise NotFound(f"no order {order_id}")
        product = await session.get(Product, order.product_id)
        found = await allocation.ciphertexts(session, [order])
        return Sheet(order.id, product.sku, product.name, ()), found[order.id]

    sheet, ciphertexts = await db.read(work)
    return await _decrypted(vault, sheet, ciphertexts)


async def _decrypted(vault: KeyVault, sheet: Sheet, ciphertexts: list[bytes]) -> Sheet:
    keys = await asyncio.to_thread(lambda: tuple(vault.decrypt(c) for c in ciphertexts))
    return Sheet(sheet.order_id, sheet.sku, sheet.product_name, keys)


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
                _ledger(
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
