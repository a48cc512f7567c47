"""Keys a buyer says do not work: the report, and the admin's (or the product's) answer.

A buyer reports one key of one of their fulfilled orders, with a short reason; a key has
one open report at most (a partial unique index). The answer is taken once, by a
conditional UPDATE of the report from `open` whose row count is checked:

- replace: the old key is revoked (never back on sale), a new one is sold to the order and
  the order's keys are queued to the buyer again through the outbox. No key in stock: the
  transaction is undone and OutOfStock says so; nothing changed.
- refund: the order becomes owed a refund (`refund_pending`): the refund job returns the
  money through the order's own provider, revokes its keys and tells the buyer.
- reject: nothing changes but the report.

A product set to `auto_replace` has a report replaced at once, once per order.
I6 holds throughout: a replacement moves one key available -> sold and one sold -> revoked.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from store import allocation
from store.audit import audit
from store.db import Database
from store.errors import InvalidInput, NotFound, OrderNotPayable, OutOfStock, StoreError
from store.models import (
    DeliveryKind,
    Key,
    KeyReport,
    KeyReportStatus,
    KeyStatus,
    Order,
    OrderStatus,
    Product,
)
from store.order_rows import lock_order

MAX_REASON = 200


class AlreadyDecided(StoreError):
    """The report was answered already (or the key already has an open report)."""


@dataclass(frozen=True, slots=True)
class ReportResult:
    report_id: int
    order_id: int
    buyer_id: int
    status: KeyReportStatus


async def report(
    db: Database,
    order_id: int,
    key_id: int,
    buyer_id: int,
    reason: str,
    *,
    now: datetime | None = None,
) -> ReportResult:
    """Record a buyer's report on one key of their own fulfilled order, and replace it at once
    if the product says so and the order had no automatic replacement yet.

    NotFound for a key that is not theirs, InvalidInput for an empty reason, AlreadyDecided if
    the key has an open report already.
    """
    reason = " ".join(reason.split())[:MAX_REASON]
    if not reason:
        raise InvalidInput("say in a few words what is wrong with the key")

    async def work(session: AsyncSession) -> ReportResult:
        moment = now or datetime.now(UTC)
        # The order's row lock serialises reports on one order (the auto-replace budget).
        order = await lock_order(session, order_id)
        if order is None or order.buyer_id != buyer_id:
            raise NotFound("no such order")
        if order.status != OrderStatus.FULFILLED:
            raise OrderNotPayable(f"order {order_id} is {order.status}")
        owned = await session.scalar(
            select(Key.id).where(
                Key.id == key_id, Key.order_id == order.id, Key.status == KeyStatus.SOLD
            )
        )
        if owned is None:
            raise NotFound("no such key in this order")
        entry = KeyReport(
            order_id=order.id,
            key_id=key_id,
            buyer_id=buyer_id,
            reason=reason,
            status=KeyReportStatus.OPEN,
            created_at=moment,
        )
        try:
            async with session.begin_nested():
                session.add(entry)
                await session.flush()
        except IntegrityError:
            raise AlreadyDecided("this key has an open report already") from None
        product = await session.get(Product, order.product_id)
        if product.auto_replace and not await _auto_replaced(session, order.id):
            with contextlib.suppress(OutOfStock):  # no stock: an admin decides instead
                async with session.begin_nested():
                    await _replace(session, entry.id, None, moment)
        await session.refresh(entry)
        return ReportResult(entry.id, order.id, buyer_id, KeyReportStatus(entry.status))

    return await db.write(work)


async def replace(
    db: Database, report_id: int, *, admin_id: int | None, now: datetime | None = None
) -> ReportResult:
    """Revoke the reported key and deliver a new one from stock.

    AlreadyDecided if the report was answered, OutOfStock (nothing changed) without stock.
    """
    return await db.write(_replace, report_id, admin_id, now or datetime.now(UTC))


async def refund(
    db: Database, report_id: int, *, admin_id: int | None, now: datetime | None = None
) -> ReportResult:
    """Make the reported key's order owed a refund (the refund job returns the money)."""

    async def work(session: AsyncSession) -> ReportResult:
        moment = now or datetime.now(UTC)
        entry = await _claim(session, report_id, KeyReportStatus.REFUNDED, admin_id, moment)
        moved = await session.execute(
            update(Order)
            .where(Order.id == entry.order_id, Order.status == OrderStatus.FULFILLED)
            .values(status=OrderStatus.REFUND_PENDING)
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount != 1:
            raise OrderNotPayable(f"order {entry.order_id} can no longer be refunded here")
        session.add(audit(admin_id, "key_report.refund", f"report {report_id}"))
        return _result(entry)

    return await db.write(work)


async def reject(
    db: Database, report_id: int, *, admin_id: int | None, now: datetime | None = None
) -> ReportResult:
    """Close a report with no change to the order."""

    async def work(session: AsyncSession) -> ReportResult:
        moment = now or datetime.now(UTC)
        entry = await _claim(session, report_id, KeyReportStatus.REJECTED, admin_id, moment)
        session.add(audit(admin_id, "key_report.reject", f"report {report_id}"))
        return _result(entry)

    return await db.write(work)


async def _replace(
    session: AsyncSession, report_id: int, admin_id: int | None, now: datetime
) -> ReportResult:
    entry = await _claim(session, report_id, KeyReportStatus.REPLACED, admin_id, now)
    order = await lock_order(session, entry.order_id)
    if order.status != OrderStatus.FULFILLED:
        raise OrderNotPayable(f"order {order.id} is {order.status}")
    revoked = await session.execute(
        update(Key)
        .where(Key.id == entry.key_id, Key.order_id == order.id, Key.status == KeyStatus.SOLD)
        .values(status=KeyStatus.REVOKED)
        .execution_options(synchronize_session=False)
    )
    if revoked.rowcount != 1:
        raise AlreadyDecided("the key is no longer the order's")
    got = await allocation.take_keys(session, order.product_id, order.id, 1, status=KeyStatus.SOLD)
    if got != 1:
        raise OutOfStock(0)  # the whole transaction is undone: the old key stays the buyer's
    session.add(allocation.delivery(order, DeliveryKind.RESHOW, now))
    session.add(audit(admin_id, "key_report.replace", f"report {report_id}"))
    return _result(entry)


async def _claim(
    session: AsyncSession,
    report_id: int,
    status: KeyReportStatus,
    admin_id: int | None,
    now: datetime,
) -> KeyReport:
    moved = await session.execute(
        update(KeyReport)
        .where(KeyReport.id == report_id, KeyReport.status == KeyReportStatus.OPEN)
        .values(status=status, decided_by=admin_id, decided_at=now)
        .execution_options(synchronize_session=False)
    )
    entry = await session.scalar(
        select(KeyReport).where(KeyReport.id == report_id).execution_options(populate_existing=True)
    )
    if entry is None:
        raise NotFound(f"no report {report_id}")
    if moved.rowcount != 1:
        raise AlreadyDecided(f"report {report_id} is {entry.status}")
    return entry


async def _auto_replaced(session: AsyncSession, order_id: int) -> bool:
    done = await session.scalar(
        select(func.count()).where(
            KeyReport.order_id == order_id,
            KeyReport.status == KeyReportStatus.REPLACED,
            KeyReport.decided_by.is_(None),
        )
    )
    return done > 0


def _result(entry: KeyReport) -> ReportResult:
    return ReportResult(entry.id, entry.order_id, entry.buyer_id, KeyReportStatus(entry.status))
