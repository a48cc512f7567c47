"""Business clients: accounts, API tokens and the prepaid balance's ledger rows.

A client orders keys over the HTTP API (store/client_orders.py) and downloads them through
one-time links (store/client_downloads.py); this module makes and manages the account.

Tokens are 32 random bytes (256 bits) from `secrets`, shown once and stored as their
SHA-256. A slow password hash (bcrypt, scrypt, argon2) makes guessing a *low-entropy*
password expensive; nobody can enumerate 2^256 tokens however cheap each guess is, so a
single SHA-256 is as safe here and keeps authentication one indexed lookup per request.
The same holds for download-link tokens.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from store.audit import audit
from store.buyers import dialect_insert
from store.db import Database
from store.errors import InvalidInput, NotFound
from store.models import (
    API_BUYER,
    Buyer,
    Client,
    LedgerEntry,
)
from store.money import check_currency, exponent, to_major

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


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


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token_pair(prefix: str) -> tuple[str, bytes]:
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
    token, digest = new_token_pair("kv_")
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
            session.add(ledger_row(client.id, "topup", balance_minor, balance_minor, None, moment))
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
        session.add(ledger_row(client.id, "topup", minor, client.balance_minor, None, moment))
        session.add(audit(admin_id, "client.topup", f"{name} {minor}"))
        return _view(client)

    return await db.write(work)


async def new_token(db: Database, name: str, *, admin_id: int | None = None) -> str:
    """Issue a new token for a client; the old one stops working at once."""
    token, digest = new_token_pair("kv_")

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


def ledger_row(
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
