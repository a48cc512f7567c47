"""Fixtures and helpers for store/ tests: a fake payment provider, a product with stock, an open
order, a query, and the invariant checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from store import catalogue, inventory, orders
from store.catalogue import ProductView
from store.check import check
from store.crypto import KeyVault
from store.db import Database
from store.errors import PaymentUnavailable
from store.orders import CheckoutPolicy, OutOfStockPolicy
from store.payments import CheckoutRequest, CheckoutStarted, CheckoutState, Payment

POLICY = CheckoutPolicy(max_unpaid=3, ttl=__import__("datetime").timedelta(minutes=30))
REFUND = OutOfStockPolicy(backorder=False)
BACKORDER = OutOfStockPolicy(backorder=True)


@dataclass
class FakeGateway:
    """An in-memory payment provider with the behaviour the state machine relies on."""

    name: str = "fake"
    currency: str | None = None
    unavailable: bool = False
    requests: dict[int, CheckoutRequest] = field(default_factory=dict)
    states: dict[int, CheckoutState] = field(default_factory=dict)
    refunds: dict[int, str] = field(default_factory=dict)

    async def start_checkout(self, request: CheckoutRequest) -> CheckoutStarted:
        if self.unavailable:
            raise PaymentUnavailable("fake provider is down")
        self.requests[request.order_id] = request
        self.states.setdefault(request.order_id, CheckoutState.OPEN)
        return CheckoutStarted(
            ref=f"fake_{request.order_id}", url=f"https://pay.example/{request.order_id}"
        )

    def payment(
        self, order_id: int, *, amount: int | None = None, currency: str | None = None
    ) -> Payment:
        """What the provider reports once the buyer paid."""
        request = self.requests[order_id]
        self.states[order_id] = CheckoutState.PAID
        return Payment(
            order_id=order_id,
            state=CheckoutState.PAID,
            checkout_ref=f"fake_{order_id}",
            payment_ref=f"pay_{order_id}",
            amount_minor=request.amount_minor if amount is None else amount,
            currency=currency or request.currency,
        )

    async def checkout_status(self, order_id: int, checkout_ref: str | None) -> Payment:
        if self.unavailable:
            raise PaymentUnavailable("fake provider is down")
        state = self.states[order_id]
        if state == CheckoutState.PAID:
            return self.payment(order_id)
        return Payment(order_id=order_id, state=state, checkout_ref=checkout_ref)

    async def cancel_checkout(self, order_id: int, checkout_ref: str | None) -> Payment:
        if self.states[order_id] == CheckoutState.OPEN:
            self.states[order_id] = CheckoutState.EXPIRED
        return await self.checkout_status(order_id, checkout_ref)

    async def refund(self, order_id: int, payment_ref: str, amount_minor: int) -> str:
        if self.unavailable:
            raise PaymentUnavailable("fake provider is down")
        return self.refunds.setdefault(order_id, f"re_{order_id}")


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


async def stocked(
    db: Database, vault: KeyVault, sku: str = "GAME", keys: int = 10, **kwargs
) -> ProductView:
    """A product with `keys` keys named f"{sku}-KEY-{i}"."""
    product = await catalogue.add_product(db, sku, f"{sku} key", "9.99", "usd", **kwargs)
    if keys:
        lines = "\n".join(f"{sku}-KEY-{i:05d}" for i in range(keys))
        await inventory.restock(db, vault, sku, inventory.parse_keys(lines), source="test")
    return product


async def open_order(
    db: Database, gateway: FakeGateway, product_id: int, buyer: int, quantity: int = 1
) -> int:
    sale = await orders.checkout(
        db,
        gateway,
        buyer_id=buyer,
        language="en",
        product_id=product_id,
        quantity=quantity,
        policy=POLICY,
    )
    return sale.order_id


async def scalar(db: Database, query: Any) -> Any:
    async def work(session):
        return await session.scalar(query)

    return await db.read(work)


async def invariants_hold(db: Database) -> None:
    failed = [f for f in await check(db, max_attempts=12) if not f.ok]
    assert not failed, failed
