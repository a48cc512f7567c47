"""The review queue: what lands in it, that its keys stay held, and that a decision is taken
once however many admins press at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from store import catalogue, orders, reconciliation, review
from store.catalogue import ProductChanges
from store.crypto import KeyVault
from store.db import Database
from store.models import AuditEntry, Delivery, DeliveryKind, Key, KeyStatus, Order, OrderStatus
from store.orders import Outcome
from tests.store.conftest import (
    REFUND,
    FakeGateway,
    invariants_hold,
    open_order,
    scalar,
    stocked,
)


async def _keys(db: Database, order_id: int, status: KeyStatus) -> int:
    return await scalar(
        db, select(func.count()).where(Key.order_id == order_id, Key.status == status)
    )


async def _status(db: Database, order_id: int) -> str:
    return await scalar(db, select(Order.status).where(Order.id == order_id))


async def _deliveries(db: Database, order_id: int, kind: DeliveryKind) -> int:
    return await scalar(
        db, select(func.count()).where(Delivery.order_id == order_id, Delivery.kind == kind)
    )


async def _in_review(db: Database, vault: KeyVault, gateway: FakeGateway, quantity: int = 3) -> int:
    product = await stocked(db, vault, keys=10)
    await catalogue.edit_product(db, "GAME", ProductChanges(review_quantity=3))
    order_id = await open_order(db, gateway, product.id, buyer=7, quantity=quantity)
    result = await orders.fulfil(db, gateway.payment(order_id), REFUND)
    assert result.outcome is Outcome.REVIEW
    return order_id


async def test_orders_at_the_quantity_or_amount_threshold_wait_with_their_keys_held(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=10)
    await catalogue.edit_product(
        db, "GAME", ProductChanges(review_quantity=4, review_amount="29.97")
    )
    below = await open_order(db, gateway, product.id, buyer=1, quantity=2)  # 19.98
    at_amount = await open_order(db, gateway, product.id, buyer=2, quantity=3)  # 29.97
    at_quantity = await open_order(db, gateway, product.id, buyer=3, quantity=4)
    outcomes = [
        (await orders.fulfil(db, gateway.payment(o), REFUND)).outcome
        for o in (below, at_amount, at_quantity)
    ]
    assert outcomes == [Outcome.FULFILLED, Outcome.REVIEW, Outcome.REVIEW]
    for order_id, quantity in ((at_amount, 3), (at_quantity, 4)):
        assert await _status(db, order_id) == OrderStatus.REVIEW
        assert await _keys(db, order_id, KeyStatus.RESERVED) == quantity
        assert await _deliveries(db, order_id, DeliveryKind.REVIEW) == 1
        assert await _deliveries(db, order_id, DeliveryKind.KEYS) == 0
    waiting = await review.waiting(db)
    assert [w.order_id for w in waiting] == [at_amount, at_quantity]
    assert not any(w.mismatch for w in waiting)
    await invariants_hold(db)


async def test_a_threshold_removed_with_zero_lets_orders_through(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=10)
    await catalogue.edit_product(db, "GAME", ProductChanges(review_quantity=1, review_amount="1"))
    edited = await catalogue.edit_product(
        db, "GAME", ProductChanges(review_quantity=0, review_amount="0")
    )
    assert (edited.review_quantity, edited.review_amount_minor) == (None, None)
    order_id = await open_order(db, gateway, product.id, buyer=1, quantity=1)
    assert (await orders.fulfil(db, gateway.payment(order_id), REFUND)).outcome is Outcome.FULFILLED


async def test_a_review_outlives_the_reservation_and_reconciliation(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    order_id = await _in_review(db, vault, gateway)
    later = datetime.now(UTC) + timedelta(days=2)
    await reconciliation.cancel_orphans(db, now=later)
    assert await reconciliation.due_for_check(db, now=later) == []
    closed = await orders.close_unpaid(db, order_id, orders.CheckoutState.EXPIRED, now=later)
    assert closed.outcome is Outcome.UNCHANGED
    assert await _status(db, order_id) == OrderStatus.REVIEW
    assert await _keys(db, order_id, KeyStatus.RESERVED) == 3


async def test_approve_sells_the_held_keys_and_queues_them(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    order_id = await _in_review(db, vault, gateway)
    result = await review.approve(db, order_id, admin_id=42)
    assert result.outcome is Outcome.FULFILLED and result.sold == 3
    assert await _status(db, order_id) == OrderStatus.FULFILLED
    assert await _keys(db, order_id, KeyStatus.SOLD) == 3
    assert await _deliveries(db, order_id, DeliveryKind.KEYS) == 1
    assert await review.waiting(db) == []
    actions = await scalar(
        db,
        select(func.count()).where(
            AuditEntry.action == "review.approve", AuditEntry.admin_id == 42
        ),
    )
    assert actions == 1
    with pytest.raises(review.AlreadyDecided):
        await review.approve(db, order_id, admin_id=42)
    await invariants_hold(db)


async def test_reject_releases_the_keys_and_owes_the_refund(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    order_id = await _in_review(db, vault, gateway)
    result = await review.reject(db, order_id, admin_id=42)
    assert result.outcome is Outcome.REFUND_DUE
    assert await _status(db, order_id) == OrderStatus.REFUND_PENDING
    assert await scalar(db, select(func.count()).where(Key.order_id == order_id)) == 0
    assert [o.order_id for o in await reconciliation.refunds_due(db)] == [order_id]
    refunded = await orders.record_refund(db, order_id, admin_id=42)
    assert refunded.outcome is Outcome.REFUNDED
    assert await _deliveries(db, order_id, DeliveryKind.REFUNDED) == 1
    available = await scalar(db, select(func.count()).where(Key.status == KeyStatus.AVAILABLE))
    assert available == 10
    await invariants_hold(db)


@pytest.mark.parametrize(
    "presses",
    [("approve", "approve"), ("reject", "reject"), ("approve", "reject")],
    ids=["approve-approve", "reject-reject", "approve-reject"],
)
async def test_two_admins_pressing_at_once_decide_once(
    db: Database, vault: KeyVault, gateway: FakeGateway, presses: tuple[str, str]
) -> None:
    order_id = await _in_review(db, vault, gateway)
    results = await asyncio.gather(
        *(getattr(review, p)(db, order_id, admin_id=40 + i) for i, p in enumerate(presses)),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, orders.Result)]
    lost = [r for r in results if isinstance(r, review.AlreadyDecided)]
    assert len(won) == 1 and len(lost) == 1, results
    decisions = await scalar(
        db, select(func.count()).where(AuditEntry.action.in_(("review.approve", "review.reject")))
    )
    assert decisions == 1
    if won[0].outcome is Outcome.FULFILLED:
        assert await _status(db, order_id) == OrderStatus.FULFILLED
        assert await _keys(db, order_id, KeyStatus.SOLD) == 3
        assert await _deliveries(db, order_id, DeliveryKind.KEYS) == 1
    else:
        assert await _status(db, order_id) == OrderStatus.REFUND_PENDING
        assert await scalar(db, select(func.count()).where(Key.order_id == order_id)) == 0
        assert await _deliveries(db, order_id, DeliveryKind.KEYS) == 0
    await invariants_hold(db)


async def test_a_paid_amount_that_differs_is_in_the_queue_as_a_mismatch(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=3)
    order_id = await open_order(db, gateway, product.id, buyer=1)
    paid = gateway.payment(order_id, amount=1)
    assert (await orders.fulfil(db, paid, REFUND)).outcome is Outcome.REVIEW
    (item,) = await review.waiting(db)
    assert item.order_id == order_id and item.mismatch
    with pytest.raises(review.AlreadyDecided):
        await review.get(db, (await open_order(db, gateway, product.id, buyer=2)))
