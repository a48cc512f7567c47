"""A key that does not work: reported once, replaced once (never back in stock), refunded or
rejected, with I6 holding throughout and two admins pressing at once deciding once."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from store import catalogue, key_reports, orders, reconciliation
from store.catalogue import ProductChanges
from store.crypto import KeyVault
from store.db import Database
from store.errors import OutOfStock
from store.models import (
    AuditEntry,
    Delivery,
    DeliveryKind,
    Key,
    KeyReportStatus,
    KeyStatus,
    OrderStatus,
)
from store.orders import Outcome
from tests.store.conftest import REFUND, FakeGateway, invariants_hold, open_order, scalar, stocked

BUYER = 7


async def _sold(
    db: Database, vault: KeyVault, gateway: FakeGateway, keys: int = 3
) -> tuple[int, int]:
    """One key of GAME sold to BUYER; (order id, key id)."""
    product = await stocked(db, vault, keys=keys)
    order_id = await open_order(db, gateway, product.id, buyer=BUYER)
    assert (await orders.fulfil(db, gateway.payment(order_id), REFUND)).outcome is Outcome.FULFILLED
    key_id = await scalar(db, select(Key.id).where(Key.order_id == order_id))
    return order_id, key_id


async def _statuses(db: Database) -> dict[str, int]:
    async def work(session):
        rows = await session.execute(select(Key.status, func.count()).group_by(Key.status))
        return dict(rows.all())

    return await db.read(work)


async def test_replace_revokes_the_key_and_delivers_a_new_one(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    order_id, key_id = await _sold(db, vault, gateway)
    filed = await key_reports.report(db, order_id, key_id, BUYER, "  says   already used ")
    assert filed.status is KeyReportStatus.OPEN
    with pytest.raises(key_reports.AlreadyDecided):
        await key_reports.report(db, order_id, key_id, BUYER, "again")

    done = await key_reports.replace(db, filed.report_id, admin_id=42)

    assert done.status is KeyReportStatus.REPLACED
    assert await scalar(db, select(Key.status).where(Key.id == key_id)) == KeyStatus.REVOKED
    sold = await scalar(
        db, select(func.count()).where(Key.order_id == order_id, Key.status == KeyStatus.SOLD)
    )
    assert sold == 1
    reshows = select(func.count()).where(Delivery.kind == DeliveryKind.RESHOW)
    assert await scalar(db, reshows) == 1
    assert await _statuses(db) == {"available": 1, "sold": 1, "revoked": 1}
    audited = select(AuditEntry.admin_id).where(AuditEntry.action == "key_report.replace")
    assert await scalar(db, audited) == 42
    await invariants_hold(db)


async def test_replace_without_stock_changes_nothing(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    order_id, key_id = await _sold(db, vault, gateway, keys=1)
    filed = await key_reports.report(db, order_id, key_id, BUYER, "invalid")

    with pytest.raises(OutOfStock):
        await key_reports.replace(db, filed.report_id, admin_id=42)

    assert await scalar(db, select(Key.status).where(Key.id == key_id)) == KeyStatus.SOLD
    again = await key_reports.reject(db, filed.report_id, admin_id=42)  # still open
    assert again.status is KeyReportStatus.REJECTED
    await invariants_hold(db)


@pytest.mark.parametrize("second", ["replace", "refund", "reject"])
async def test_two_admins_pressing_at_once_decide_once(
    db: Database, vault: KeyVault, gateway: FakeGateway, second: str
) -> None:
    order_id, key_id = await _sold(db, vault, gateway)
    filed = await key_reports.report(db, order_id, key_id, BUYER, "invalid")

    results = await asyncio.gather(
        key_reports.replace(db, filed.report_id, admin_id=41),
        getattr(key_reports, second)(db, filed.report_id, admin_id=42),
        return_exceptions=True,
    )

    assert sum(isinstance(r, key_reports.ReportResult) for r in results) == 1, results
    assert sum(isinstance(r, key_reports.AlreadyDecided) for r in results) == 1, results
    decisions = select(func.count()).where(AuditEntry.action.like("key_report.%"))
    assert await scalar(db, decisions) == 1
    revoked = await scalar(db, select(func.count()).where(Key.status == KeyStatus.REVOKED))
    assert revoked <= 1
    await invariants_hold(db)


async def test_refund_makes_the_order_owed_its_money(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    order_id, key_id = await _sold(db, vault, gateway)
    filed = await key_reports.report(db, order_id, key_id, BUYER, "invalid")

    await key_reports.refund(db, filed.report_id, admin_id=42)
    assert [o.order_id for o in await reconciliation.refunds_due(db)] == [order_id]
    refunded = await orders.record_refund(db, order_id)

    assert refunded.outcome is Outcome.REFUNDED
    assert await scalar(db, select(Key.status).where(Key.id == key_id)) == KeyStatus.REVOKED
    await invariants_hold(db)


async def test_auto_replace_replaces_once_per_order(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=5)
    await catalogue.edit_product(db, "GAME", ProductChanges(auto_replace=True))
    order_id = await open_order(db, gateway, product.id, buyer=BUYER, quantity=2)
    await orders.fulfil(db, gateway.payment(order_id), REFUND)
    first, second = await scalar_list(db, order_id)

    one = await key_reports.report(db, order_id, first, BUYER, "used")
    two = await key_reports.report(db, order_id, second, BUYER, "used too")

    assert (one.status, two.status) == (KeyReportStatus.REPLACED, KeyReportStatus.OPEN)
    assert await _statuses(db) == {"available": 2, "sold": 2, "revoked": 1}
    await invariants_hold(db)


async def test_a_stranger_cannot_report_someone_elses_key(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    from store.errors import NotFound

    order_id, key_id = await _sold(db, vault, gateway)
    with pytest.raises(NotFound):
        await key_reports.report(db, order_id, key_id, BUYER + 1, "mine now")
    status = await scalar(db, select(Key.status).where(Key.id == key_id))
    assert status == KeyStatus.SOLD and OrderStatus.FULFILLED


async def scalar_list(db: Database, order_id: int) -> list[int]:
    async def work(session):
        return list(await session.scalars(select(Key.id).where(Key.order_id == order_id)))

    return await db.read(work)
