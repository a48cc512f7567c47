"""Moving keys between available, reserved, sold and revoked — inside a caller's transaction.

These are the only statements that change a key's status or order. Each is one conditional
UPDATE whose result is checked, never a read followed by a write, so two transactions can
never take the same key: on SQLite because write transactions are serialised, on PostgreSQL
because candidate rows are locked with `FOR UPDATE SKIP LOCKED` and re-checked.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from store.models import (
    Allocation,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    Key,
    KeyStatus,
    Order,
    Product,
    ProductKind,
)


async def take_keys(
    session: AsyncSession, product_id: int, order_id: int, count: int, *, status: KeyStatus
) -> int:
    """Give up to `count` available keys to an order; return how many it got.

    Keys go oldest first, or at random for a product whose allocation says so (a random
    pick scans the product's available keys: the price of keys a buyer cannot predict).
    `status` is RESERVED at checkout, or SOLD when a payment arrives with nothing reserved.
    """
    allocation = await session.scalar(select(Product.allocation).where(Product.id == product_id))
    candidates = (
        select(Key.id)
        .where(Key.product_id == product_id, Key.status == KeyStatus.AVAILABLE)
        .order_by(func.random() if allocation == Allocation.RANDOM else Key.id)
        .limit(count)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    result = await session.execute(
        update(Key)
        .where(Key.id.in_(candidates), Key.status == KeyStatus.AVAILABLE)
        .values(status=status, order_id=order_id)
        .returning(Key.id)
        .execution_options(synchronize_session=False)
    )
    return len(result.all())


async def sell_reserved(session: AsyncSession, order_id: int) -> int:
    """Turn an order's reservation into a sale; return how many keys it holds."""
    return await _move(session, order_id, KeyStatus.RESERVED, KeyStatus.SOLD)


async def release(session: AsyncSession, order_id: int) -> int:
    """Put an order's reserved keys back on sale."""
    return await _move(session, order_id, KeyStatus.RESERVED, KeyStatus.AVAILABLE, detach=True)


async def unsell(session: AsyncSession, order_id: int) -> int:
    """Undo a sale made earlier in the same transaction, when the order cannot be filled.

    Only for keys that were never delivered: the caller's transaction sold them a moment
    ago, so nobody outside it has seen them.
    """
    return await _move(session, order_id, KeyStatus.SOLD, KeyStatus.AVAILABLE, detach=True)


async def revoke(session: AsyncSession, order_id: int) -> int:
    """Mark an order's sold keys revoked: they are never sold again."""
    return await _move(session, order_id, KeyStatus.SOLD, KeyStatus.REVOKED)


async def _move(
    session: AsyncSession,
    order_id: int,
    source: KeyStatus,
    target: KeyStatus,
    *,
    detach: bool = False,
) -> int:
    """Move an order's keys from one status to another (and off the order, with `detach`)."""
    values: dict[str, object] = {"status": target}
    if detach:
        values["order_id"] = None
    result = await session.execute(
        update(Key)
        .where(Key.order_id == order_id, Key.status == source)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


async def newest_shared_key(session: AsyncSession, product_id: int) -> int | None:
    """The code every buyer of a shared-key product gets: the most recently imported."""
    return await session.scalar(
        select(Key.id)
        .where(Key.product_id == product_id, Key.status == KeyStatus.AVAILABLE)
        .order_by(Key.id.desc())
        .limit(1)
    )


async def ciphertexts(session: AsyncSession, orders: list[Order]) -> dict[int, list[bytes]]:
    """The encrypted keys that belong to each order, in allocation order (one query per kind)."""
    found: dict[int, list[bytes]] = {order.id: [] for order in orders}
    unique = [order.id for order in orders if order.shared_key_id is None]
    if unique:
        rows = await session.execute(
            select(Key.order_id, Key.ciphertext)
            .where(Key.order_id.in_(unique), Key.status == KeyStatus.SOLD)
            .order_by(Key.id)
        )
        for order_id, ciphertext in rows:
            found[order_id].append(ciphertext)
    shared = {order.shared_key_id: order.id for order in orders if order.shared_key_id is not None}
    if shared:
        rows = await session.execute(select(Key.id, Key.ciphertext).where(Key.id.in_(shared)))
        by_key = dict(rows.all())
        for order in orders:
            if order.shared_key_id is not None:
                found[order.id].append(by_key[order.shared_key_id])
    return found


async def fill_order(session: AsyncSession, order: Order, product: Product) -> bool:
    """Make the order's keys its own, reserved or fresh; False (and nothing held) if short."""
    if product.kind == ProductKind.SHARED:
        order.shared_key_id = await newest_shared_key(session, product.id)
        return order.shared_key_id is not None
    held = await sell_reserved(session, order.id)
    if held < order.quantity:
        held += await take_keys(
            session, product.id, order.id, order.quantity - held, status=KeyStatus.SOLD
        )
    if held < order.quantity:
        # Short: put back what this transaction took. Nobody has seen these keys.
        await unsell(session, order.id)
        return False
    return True


async def stock_left(session: AsyncSession, product: Product) -> int | None:
    """Unique keys left on sale, counted up to one past the low-stock threshold (None: shared)."""
    if product.kind == ProductKind.SHARED:
        return None
    capped = (
        select(Key.id)
        .where(Key.product_id == product.id, Key.status == KeyStatus.AVAILABLE)
        .limit(product.low_stock_threshold + 1)
        .subquery()
    )
    return await session.scalar(select(func.count()).select_from(capped))


def delivery(order: Order, kind: DeliveryKind, now: datetime) -> Delivery:
    """A queued message to the order's buyer, to add to the caller's session."""
    return Delivery(
        order_id=order.id,
        kind=kind,
        chat_id=order.buyer_id,
        status=DeliveryStatus.QUEUED,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )
