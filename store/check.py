"""The invariants, checked on a live database: what `keyvend check` reports.

Each check is one query that finds violations; an empty result means the invariant holds.
The report names orders and products by id, never a key. Given the key vault, it also
decrypts stored keys (a random sample, or all of them) and recomputes their duplicate
digests: a key that fails either could not be delivered, or could be imported twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from store.crypto import KeyVault, KeyVaultError
from store.db import Database
from store.models import (
    Client,
    ClientEvent,
    Coupon,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    ImportBatch,
    Key,
    KeyReport,
    KeyReportStatus,
    KeyStatus,
    LedgerEntry,
    Order,
    OrderStatus,
    Product,
    ProductKind,
)

# A refund owed longer than this is stuck, not in progress.
REFUND_GRACE = timedelta(hours=1)
_PAID_ENDS = (
    OrderStatus.FULFILLED,
    OrderStatus.BACKORDERED,
    OrderStatus.REFUNDED,
    OrderStatus.DISPUTED,
    OrderStatus.REVIEW,
    OrderStatus.REFUND_PENDING,
)
_HOLDS_SOLD = (OrderStatus.FULFILLED, OrderStatus.DISPUTED)
# A sale whose refund is owed (an admin refunded a reported key) keeps its keys sold until
# the refund is recorded, which revokes them.
_MAY_HOLD_SOLD = (*_HOLDS_SOLD, OrderStatus.REFUND_PENDING)
# Keys decrypted by a default `keyvend check`; `--full` decrypts every one.
KEY_SAMPLE = 1000


@dataclass(frozen=True, slots=True)
class Finding:
    invariant: str
    description: str
    violations: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.violations


async def check(
    db: Database,
    *,
    max_attempts: int,
    vault: KeyVault | None = None,
    sample: int | None = KEY_SAMPLE,
    now: datetime | None = None,
) -> list[Finding]:
    """Run every check (the key check with a vault: `sample` random keys, None for all);
    each Finding lists up to 20 violations."""
    now = now or datetime.now(UTC)

    async def work(session: AsyncSession) -> list[Finding]:
        findings = [
            await _keys_match_orders(session),
            await _fulfilled_orders_hold_their_keys(session),
            await _imported_equals_states(session),
            await _paid_orders_are_settled(session, now),
            await _deliveries_within_budget(session, max_attempts),
            await _balances_match_ledgers(session),
            await _coupon_uses_match_orders(session),
        ]
        if vault is not None:
            findings.append(await _keys_decrypt(session, vault, sample))
        return findings

    return await db.read(work)


async def _ids(session: AsyncSession, query) -> tuple[str, ...]:
    return tuple(str(row) for row in (await session.scalars(query.limit(20))).all())


async def _coupon_uses_match_orders(session: AsyncSession) -> Finding:
    """A coupon's uses are its paid orders, and its held uses its open checkouts."""
    counted = (
        select(
            Order.coupon_id,
            func.count(Order.paid_at).label("paid"),
            func.count(
                case((and_(Order.paid_at.is_(None), Order.status == OrderStatus.PENDING), 1))
            ).label("open"),
        )
        .where(Order.coupon_id.is_not(None))
        .group_by(Order.coupon_id)
        .subquery()
    )
    paid, unpaid = func.coalesce(counted.c.paid, 0), func.coalesce(counted.c.open, 0)
    rows = await session.execute(
        select(Coupon.code, Coupon.uses, paid, Coupon.held, unpaid)
        .outerjoin(counted, counted.c.coupon_id == Coupon.id)
        .where(or_(Coupon.uses != paid, Coupon.held != unpaid))
        .order_by(Coupon.id)
        .limit(20)
    )
    return Finding(
        "coupons",
        "each code's uses are its paid orders, and its held uses its open checkouts",
        tuple(
            f"{code}: uses {u} for {p} paid orders, held {h} for {o} open checkouts"
            for code, u, p, h, o in rows
        ),
    )


async def _keys_match_orders(session: AsyncSession) -> Finding:
    """I1: a key is on at most one order, and its state agrees with that order's."""
    query = (
        select(Key.id)
        .outerjoin(Order, Order.id == Key.order_id)
        .where(
            or_(
                and_(Key.status == KeyStatus.AVAILABLE, Key.order_id.is_not(None)),
                and_(Key.status != KeyStatus.AVAILABLE, Key.order_id.is_(None)),
                and_(
                    Key.status == KeyStatus.RESERVED,
                    Order.status.not_in((OrderStatus.PENDING, OrderStatus.REVIEW)),
                ),
                and_(Key.status == KeyStatus.SOLD, Order.status.not_in(_MAY_HOLD_SOLD)),
                and_(
                    Key.status == KeyStatus.REVOKED,
                    Order.status != OrderStatus.REFUNDED,
                    # A key the buyer reported and was given another for stays on the order.
                    ~select(KeyReport.id)
                    .where(
                        KeyReport.key_id == Key.id,
                        KeyReport.status == KeyReportStatus.REPLACED,
                    )
                    .exists(),
                ),
            )
        )
        .order_by(Key.id)
    )
    keys = await _ids(session, query)
    return Finding(
        "I1",
        "each key belongs to at most one order, in a state that agrees with it",
        tuple(f"key id {k}" for k in keys),
    )


async def _fulfilled_orders_hold_their_keys(session: AsyncSession) -> Finding:
    """I1/I4: a fulfilled unique-key order holds exactly its quantity of sold keys."""
    sold = (
        select(Key.order_id, func.count().label("n"))
        .where(Key.status == KeyStatus.SOLD)
        .group_by(Key.order_id)
        .subquery()
    )
    query = (
        select(Order.id)
        .join(Product, Product.id == Order.product_id)
        .outerjoin(sold, sold.c.order_id == Order.id)
        .where(
            Order.status.in_(_HOLDS_SOLD),
            Product.kind == ProductKind.UNIQUE,
            # An order disputed before its payment was applied was never given keys.
            func.coalesce(sold.c.n, 0)
            != case((Order.fulfilled_at.is_(None), 0), else_=Order.quantity),
        )
        .order_by(Order.id)
    )
    orders = await _ids(session, query)
    return Finding(
        "I1",
        "every fulfilled order holds exactly as many keys as it bought",
        tuple(f"order #{o}" for o in orders),
    )


async def _imported_equals_states(session: AsyncSession) -> Finding:
    """I6: per product, keys imported = available + reserved + sold + revoked."""
    imported = (
        select(ImportBatch.product_id, func.sum(ImportBatch.added).label("n"))
        .group_by(ImportBatch.product_id)
        .subquery()
    )
    stored = select(Key.product_id, func.count().label("n")).group_by(Key.product_id).subquery()
    rows = await session.execute(
        select(Product.sku, func.coalesce(imported.c.n, 0), func.coalesce(stored.c.n, 0))
        .outerjoin(imported, imported.c.product_id == Product.id)
        .outerjoin(stored, stored.c.product_id == Product.id)
        .where(func.coalesce(imported.c.n, 0) != func.coalesce(stored.c.n, 0))
        .limit(20)
    )
    return Finding(
        "I6",
        "per product, imported = available + reserved + sold + revoked",
        tuple(f"{sku}: imported {i}, in stock records {s}" for sku, i, s in rows),
    )


async def _paid_orders_are_settled(session: AsyncSession, now: datetime) -> Finding:
    """I2: every paid order is fulfilled, backordered, refunded, disputed or in review."""
    query = (
        select(Order.id)
        .where(
            Order.paid_at.is_not(None),
            or_(
                Order.status.not_in(_PAID_ENDS),
                and_(
                    Order.status == OrderStatus.REFUND_PENDING, Order.paid_at < now - REFUND_GRACE
                ),
            ),
        )
        .order_by(Order.id)
    )
    stuck = await _ids(session, query)
    unqueued = await _ids(
        session,
        select(Order.id)
        .outerjoin(
            Delivery, and_(Delivery.order_id == Order.id, Delivery.kind == DeliveryKind.KEYS)
        )
        # A business client's order is delivered through its event (webhook, feed, e-mail).
        .outerjoin(ClientEvent, ClientEvent.order_id == Order.id)
        .where(
            Order.status == OrderStatus.FULFILLED, Delivery.id.is_(None), ClientEvent.id.is_(None)
        )
        .order_by(Order.id),
    )
    return Finding(
        "I2",
        "every paid order is fulfilled (with a delivery), backordered, refunded or flagged",
        tuple(f"order #{o} is stuck" for o in stuck)
        + tuple(f"order #{o} has no delivery" for o in unqueued),
    )


async def _deliveries_within_budget(session: AsyncSession, max_attempts: int) -> Finding:
    """I4: no delivery still queued past its retry budget."""
    query = (
        select(Delivery.id)
        .where(Delivery.status == DeliveryStatus.QUEUED, Delivery.attempts >= max_attempts)
        .order_by(Delivery.id)
    )
    stuck = await _ids(session, query)
    return Finding(
        "I4", "no delivery is stuck past its retry budget", tuple(f"delivery {d}" for d in stuck)
    )


async def _balances_match_ledgers(session: AsyncSession) -> Finding:
    """Every business client's balance is the sum of its ledger, and within its credit."""
    ledger = (
        select(LedgerEntry.client_id, func.sum(LedgerEntry.amount_minor).label("n"))
        .group_by(LedgerEntry.client_id)
        .subquery()
    )
    query = (
        select(Client.name)
        .outerjoin(ledger, ledger.c.client_id == Client.id)
        .where(
            or_(
                func.coalesce(ledger.c.n, 0) != Client.balance_minor,
                Client.balance_minor < -Client.credit_minor,
            )
        )
        .order_by(Client.name)
    )
    names = await _ids(session, query)
    return Finding(
        "money",
        "every client's balance equals its ledger and stays within its credit",
        tuple(f"client {n}" for n in names),
    )


async def _keys_decrypt(session: AsyncSession, vault: KeyVault, sample: int | None) -> Finding:
    """I5: stored keys decrypt with the current key set and match their digests."""
    total = await session.scalar(select(func.count()).select_from(Key))
    query = select(Key.id, Key.ciphertext, Key.digest)
    if sample is None:
        query = query.order_by(Key.id).execution_options(yield_per=2000)
    else:
        query = query.order_by(func.random()).limit(sample)
    checked, failed = 0, []
    async for key_id, ciphertext, digest in await session.stream(query):
        checked += 1
        try:
            ok = vault.digest(vault.decrypt(ciphertext)) == bytes(digest)
        except KeyVaultError:
            ok = False
        if not ok:
            failed.append(key_id)
    scope = "all" if sample is None else "a random sample, `keyvend check --full` for all"
    return Finding(
        "I5",
        f"stored keys decrypt with KEY_ENCRYPTION_KEY and match their duplicate digests "
        f"({checked} of {total} checked: {scope})",
        (f"{len(failed)} of {checked} keys failed", *(f"key id {k}" for k in sorted(failed)[:20]))
        if failed
        else (),
    )
