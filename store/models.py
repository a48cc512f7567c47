"""The schema: every table keyvend keeps, as SQLAlchemy 2 declarative models.

The models are the single description of the schema; Alembic migrations are written from
them and are the only way the database changes. Constraints here carry the invariants that
must hold even if application code is wrong: a key's digest is unique per product (no key
imported twice), a key points at one order at most (no key sold twice), a provider's event
id is recorded once (no event applied twice), and an order has one key delivery.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python, whatever the database keeps.

    SQLite has no time zones, so values are stored naive in UTC and made aware again on the
    way out; comparisons in SQL stay correct because every stored value is UTC.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use aware UTC datetimes")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class ProductKind(StrEnum):
    UNIQUE = "unique"  # each key sold once
    SHARED = "shared"  # one code every buyer receives (a course password, say)


class Allocation(StrEnum):
    OLDEST = "oldest"  # keys are sold in the order they were imported
    RANDOM = "random"  # any available key: a buyer cannot predict the next from the last


class KeyStatus(StrEnum):
    AVAILABLE = "available"
    RESERVED = "reserved"
    SOLD = "sold"
    REVOKED = "revoked"


class OrderStatus(StrEnum):
    PENDING = "pending"  # checkout open, keys reserved
    FULFILLED = "fulfilled"  # paid, keys allocated and theirs
    EXPIRED = "expired"  # checkout lapsed unpaid, reservation released
    CANCELLED = "cancelled"  # payment failed or checkout could not start
    BACKORDERED = "backordered"  # paid, no stock: fulfilled at the next restock
    REFUND_PENDING = "refund_pending"  # paid, no stock: a refund is owed and being made
    REFUNDED = "refunded"  # money returned; any keys revoked
    DISPUTED = "disputed"  # the buyer disputed the charge
    REVIEW = "review"  # paid amount differs from the order: an admin decides


class DeliveryKind(StrEnum):
    KEYS = "keys"  # first delivery of a fulfilled order's keys
    RESHOW = "reshow"  # keys shown again from "my orders"
    BACKORDERED = "backordered"  # notice: paid, keys follow at restock
    REFUNDED = "refunded"  # notice: money returned
    REVIEW = "review"  # notice: payment is being checked by the seller
    # Notice: a product the buyer asked about is back in stock. It has no order (it names a
    # product) and carries no value, so it waits until no key delivery is due.
    RESTOCKED = "restocked"
    SUBSCRIPTION_ENDED = "sub_ended"  # notice: a subscription ended, no more keys come
    SUBSCRIPTION_PAST_DUE = "sub_past_due"  # notice: a period's payment failed: fix the card
    REPORT_REJECTED = "report_rejected"  # notice: the seller found the reported key working


class SubscriptionStatus(StrEnum):
    ACTIVE = "active"  # paid up; each paid period delivers a key
    PAST_DUE = "past_due"  # a period's payment failed; the provider retries
    ENDED = "ended"  # cancelled or not renewed: no more keys


class Period(StrEnum):
    """How often a subscription product is paid for."""

    WEEK = "week"
    MONTH = "month"
    YEAR = "year"


# The buyer of every order placed over the business API: no Telegram user (their ids are
# positive), so nothing is ever sent to a chat for it; `Order.client_id` says whose it is.
API_BUYER = 0
BALANCE_PROVIDER = "balance"  # paid from a business client's prepaid balance


class DeliveryStatus(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    UNDELIVERABLE = "undeliverable"


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON}


def translated(translations: dict[str, Any] | None, language: str, field: str, default: str) -> str:
    """A product text in the buyer's language, or the default language's."""
    return ((translations or {}).get(language) or {}).get(field) or default


class Buyer(Base):
    __tablename__ = "buyers"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    language: Mapped[str] = mapped_column(String(8), default="en")
    # Set by /language: from then on the buyer's Telegram language no longer overrides it.
    language_chosen: Mapped[bool] = mapped_column(Boolean, default=False)
    username: Mapped[str | None] = mapped_column(String(64), index=True, default=None)
    blacklisted: Mapped[bool] = mapped_column(Boolean, default=False)
    ban_reason: Mapped[str | None] = mapped_column(Text, default=None)
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]


class Product(Base):
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    # {"zh": {"name": ..., "description": ...}}: names and descriptions in other languages
    translations: Mapped[dict[str, Any]] = mapped_column(default=dict)
    kind: Mapped[str] = mapped_column(String(10), default=ProductKind.UNIQUE)
    # The card price; a provider with a currency of its own (Telegram Stars) is priced in
    # `prices` instead: {"stars": {"amount": 50, "currency": "xtr"}}. No entry: not offered.
    price_minor: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    prices: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # A subscription product is paid every `every` (a Period) and delivers a key each time.
    every: Mapped[str | None] = mapped_column(String(8), default=None)
    max_per_order: Mapped[int] = mapped_column(Integer, default=10)
    max_per_buyer: Mapped[int | None] = mapped_column(Integer, default=None)
    low_stock_threshold: Mapped[int] = mapped_column(Integer, default=5)
    delivery_template: Mapped[str] = mapped_column(Text, default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]
    category: Mapped[str] = mapped_column(String(64), default="")  # "" is uncategorised
    allocation: Mapped[str] = mapped_column(String(10), default=Allocation.OLDEST)
    # A paid order at or above either threshold waits in the admins' review queue (None: never).
    review_quantity: Mapped[int | None] = mapped_column(Integer, default=None)
    review_amount_minor: Mapped[int | None] = mapped_column(Integer, default=None)
    # A reported key is replaced without an admin, once per order.
    auto_replace: Mapped[bool] = mapped_column(Boolean, default=False)

    def name_in(self, language: str) -> str:
        return translated(self.translations, language, "name", self.name)


class ImportBatch(Base):
    __tablename__ = "import_batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    source: Mapped[str] = mapped_column(String(40))  # "chat", "file", "cli"
    admin_id: Mapped[int | None] = mapped_column(BigInteger)
    added: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]


class Key(Base):
    __tablename__ = "keys"
    __table_args__ = (
        UniqueConstraint("product_id", "digest"),
        # Allocation takes the oldest available keys of a product: this index serves it.
        Index(None, "product_id", "status", "id"),
        Index(None, "order_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    batch_id: Mapped[int] = mapped_column(ForeignKey("import_batches.id"))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    digest: Mapped[bytes] = mapped_column(LargeBinary(32))  # HMAC of the normalised key
    status: Mapped[str] = mapped_column(String(10), default=KeyStatus.AVAILABLE)
    # A single column, so a unique key can belong to one order at most (I1).
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), default=None)


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (
        Index(None, "buyer_id", "id"),
        Index(None, "status", "check_after"),
        Index(None, "payment_ref"),
        Index(None, "client_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    buyer_id: Mapped[int] = mapped_column(ForeignKey("buyers.id"))
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    quantity: Mapped[int] = mapped_column(Integer)
    amount_minor: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    provider: Mapped[str] = mapped_column(String(16))
    # The provider's handle on the checkout (a Stripe Checkout Session id).
    provider_ref: Mapped[str | None] = mapped_column(String(255), unique=True, default=None)
    checkout_url: Mapped[str | None] = mapped_column(Text, default=None)
    # The provider's handle on the money (a PaymentIntent id), set when paid; refunds use it.
    payment_ref: Mapped[str | None] = mapped_column(String(255), default=None)
    status: Mapped[str] = mapped_column(String(16), default=OrderStatus.PENDING)
    reserved_until: Mapped[datetime]
    # When reconciliation should next ask the provider about this order, if it is still open.
    check_after: Mapped[datetime]
    created_at: Mapped[datetime]
    paid_at: Mapped[datetime | None] = mapped_column(default=None)
    paid_amount_minor: Mapped[int | None] = mapped_column(Integer, default=None)
    paid_currency: Mapped[str | None] = mapped_column(String(3), default=None)
    fulfilled_at: Mapped[datetime | None] = mapped_column(default=None)
    closed_at: Mapped[datetime | None] = mapped_column(default=None)
    # Set for an order a business client placed over the API (its buyer is then API_BUYER).
    client_id: Mapped[int | None] = mapped_column(ForeignKey("clients.id"), default=None)
    # The one key every buyer of a shared-key product receives. (Not a foreign key: keys
    # already point at orders, and a cycle of constraints would make schema changes painful.)
    shared_key_id: Mapped[int | None] = mapped_column(Integer, default=None)
    # The subscription a renewal's order belongs to (the first period's order is the one the
    # subscription points at). Not a foreign key, for the same reason as shared_key_id.
    subscription_id: Mapped[int | None] = mapped_column(Integer, default=None, index=True)
    # The coupon the buyer's code named, and what it took off: `amount_minor` is what is
    # charged, after the discount (store/coupons.py).
    coupon_id: Mapped[int | None] = mapped_column(ForeignKey("coupons.id"), default=None)
    discount_minor: Mapped[int] = mapped_column(Integer, default=0)


class Coupon(Base):
    """A code a buyer enters for a discount: a percentage, or a fixed amount in `currency`.

    `held` counts the unpaid checkouts that took the code (each holds one use until it is
    paid, expires or is cancelled) and `uses` the paid orders that carry it; a checkout may
    take the code only while `uses + held < max_uses` (store/coupons.py says why).
    """

    __tablename__ = "coupons"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(24), unique=True)  # upper case: codes ignore case
    percent: Mapped[int | None] = mapped_column(Integer, default=None)
    off_minor: Mapped[int | None] = mapped_column(Integer, default=None)
    currency: Mapped[str | None] = mapped_column(String(3), default=None)  # of off_minor
    product_id: Mapped[int | None] = mapped_column(ForeignKey("products.id"), default=None)
    max_uses: Mapped[int | None] = mapped_column(Integer, default=None)
    valid_until: Mapped[datetime | None] = mapped_column(default=None)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    held: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]


class PaymentEvent(Base):
    """The idempotency ledger: a provider's event is applied at most once.

    Event ids are unique per provider only (a Stripe event id and a Telegram charge id live in
    different spaces), so the constraint is on the pair.
    """

    __tablename__ = "payment_events"
    __table_args__ = (UniqueConstraint("provider", "event_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(64))
    order_id: Mapped[int | None] = mapped_column(Integer, default=None)
    received_at: Mapped[datetime]


class Subscription(Base):
    """A buyer paying for a product every period; each paid period is an order of its own."""

    __tablename__ = "subscriptions"
    __table_args__ = (Index(None, "buyer_id"), Index(None, "status", "current_period_end"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    buyer_id: Mapped[int] = mapped_column(ForeignKey("buyers.id"))
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    provider: Mapped[str] = mapped_column(String(16))
    # The order of the first period: it carries the checkout the buyer subscribed through.
    first_order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), unique=True)
    # The provider's handle to manage it (cancel): its first payment's reference.
    payment_ref: Mapped[str | None] = mapped_column(String(255), default=None)
    status: Mapped[str] = mapped_column(String(16), default=SubscriptionStatus.ACTIVE)
    current_period_end: Mapped[datetime | None] = mapped_column(default=None)
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    ended_at: Mapped[datetime | None] = mapped_column(default=None)


class Delivery(Base):
    """The outbox: one row per message that carries value, sent by the delivery worker."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index(None, "status", "next_attempt_at"),
        Index(None, "order_id"),
        # An order's keys are queued for first delivery once, whatever replays happen.
        Index(
            "uq_deliveries_order_keys",
            "order_id",
            unique=True,
            sqlite_where=text("kind = 'keys'"),
            postgresql_where=text("kind = 'keys'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"))  # None: restock notice
    product_id: Mapped[int | None] = mapped_column(ForeignKey("products.id"), default=None)
    kind: Mapped[str] = mapped_column(String(16))
    chat_id: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    lease_owner: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    message_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    last_error: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None] = mapped_column(default=None)


class Reveal(Base):
    """Each time an order's keys were put in front of the buyer: dispute evidence.

    It also remembers the chat message so the key can be removed after its time is up.
    """

    __tablename__ = "reveals"
    __table_args__ = (Index(None, "order_id"), Index(None, "delete_after"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id"))
    how: Mapped[str] = mapped_column(String(16))  # DeliveryKind.KEYS or RESHOW
    chat_id: Mapped[int] = mapped_column(BigInteger)
    message_id: Mapped[int] = mapped_column(BigInteger)
    revealed_at: Mapped[datetime]
    # Null once the message has been removed from the chat.
    delete_after: Mapped[datetime | None] = mapped_column(default=None)


class VaultRecord(Base):
    """The database's one record of its key encryption key (store/vault.py).

    `key_check` is the check value of the KEK that encrypts today: a KEY_ENCRYPTION_KEY
    that does not list it is refused before anything is read or written. `digest_key` is
    the database's fixed duplicate-digest key, encrypted under that KEK.
    """

    __tablename__ = "vault"

    # Always 1: one record per database, so two first starts cannot both record one.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    key_check: Mapped[bytes] = mapped_column(LargeBinary(32))
    digest_key: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime]


class RestockWatcher(Base):
    """A buyer who pressed "Notify me" on a sold-out product, until a restock tells them."""

    __tablename__ = "restock_watchers"
    __table_args__ = (UniqueConstraint("buyer_id", "product_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    buyer_id: Mapped[int] = mapped_column(BigInteger)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"), index=True)
    created_at: Mapped[datetime]
    notified_at: Mapped[datetime | None] = mapped_column(default=None)  # None: still waiting


class KeyReportStatus(StrEnum):
    OPEN = "open"
    REPLACED = "replaced"  # the key was revoked and another delivered
    REFUNDED = "refunded"  # the order's money went back
    REJECTED = "rejected"  # the admin found nothing wrong


class KeyReport(Base):
    """A buyer's word that one key of their order does not work, and what became of it."""

    __tablename__ = "key_reports"
    __table_args__ = (
        Index(None, "order_id"),
        Index(None, "status", "id"),
        # One open report per key: a second press while one waits changes nothing.
        Index(
            "uq_key_reports_open_key",
            "key_id",
            unique=True,
            sqlite_where=text("status = 'open'"),
            postgresql_where=text("status = 'open'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    key_id: Mapped[int] = mapped_column(ForeignKey("keys.id"))
    buyer_id: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(10), default=KeyReportStatus.OPEN)
    decided_by: Mapped[int | None] = mapped_column(BigInteger, default=None)  # None: automatic
    decided_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime]


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    admin_id: Mapped[int | None] = mapped_column(BigInteger)
    action: Mapped[str] = mapped_column(String(40))
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]


# ---------------------------------------------------------------- business clients (the API)


class Client(Base):
    """A business client or web shop ordering over the HTTP API, paying from a balance."""

    __tablename__ = "clients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # SHA-256 of the bearer token (see store/clients.py for why a fast hash is right here).
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    currency: Mapped[str] = mapped_column(String(3))
    # The running total of the client's ledger, kept here so that a charge is one
    # conditional UPDATE (balance - amount >= -credit) whose row count is checked.
    balance_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    credit_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    # Orders of more keys than this wait in the admins' review queue (None: never).
    review_over: Mapped[int | None] = mapped_column(Integer, default=None)
    webhook_url: Mapped[str | None] = mapped_column(Text, default=None)
    webhook_secret: Mapped[str | None] = mapped_column(String(80), default=None)
    email: Mapped[str | None] = mapped_column(String(254), default=None)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]


class LedgerEntry(Base):
    """One movement of a client's money: a top-up, an order's charge, a refund."""

    __tablename__ = "client_ledger"
    __table_args__ = (Index(None, "client_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id"))
    kind: Mapped[str] = mapped_column(String(16))  # "topup", "order", "refund"
    amount_minor: Mapped[int] = mapped_column(BigInteger)  # signed: a charge is negative
    balance_after_minor: Mapped[int] = mapped_column(BigInteger)
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), default=None)
    created_at: Mapped[datetime]


class ApiRequest(Base):
    """An `Idempotency-Key` a client used, the request it came with and the order it made."""

    __tablename__ = "api_requests"
    __table_args__ = (UniqueConstraint("client_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id"))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), default=None)
    created_at: Mapped[datetime]


class Download(Base):
    """A one-time link to an order's keys as a spreadsheet."""

    __tablename__ = "downloads"
    __table_args__ = (Index(None, "order_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    # The token encrypted with the key vault, so the order's page can show a live link again.
    token_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None] = mapped_column(default=None)
    used_ip: Mapped[str | None] = mapped_column(String(45), default=None)


class ClientEvent(Base):
    """Something a client is told about (`order.fulfilled`): the feed of /api/v1/events."""

    __tablename__ = "client_events"
    __table_args__ = (Index(None, "client_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id"))
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    type: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime]


class ClientDelivery(Base):
    """The clients' outbox: an event to POST to a webhook, or an order's keys to e-mail."""

    __tablename__ = "client_deliveries"
    __table_args__ = (
        Index(None, "status", "next_attempt_at"),
        UniqueConstraint("event_id", "channel"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("client_events.id"))
    channel: Mapped[str] = mapped_column(String(8))  # "webhook" or "email"
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    lease_owner: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None] = mapped_column(default=None)


class PaidBroadcastDay(Base):
    """Messages sent with Telegram's paid broadcast on one UTC day, and how many of them went
    past the free rate (those Telegram charges Stars for): the cost /stats shows."""

    __tablename__ = "paid_broadcasts"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    messages: Mapped[int] = mapped_column(Integer, default=0)
    beyond_free: Mapped[int] = mapped_column(Integer, default=0)
