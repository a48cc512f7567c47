"""The payment provider interface, as the order state machine sees it.

A provider starts a checkout for an order, says what became of it, and returns money. The
state machine never knows which provider it talks to; the adapters (Stripe Checkout,
Telegram Stars) live at the edge and raise `PaymentUnavailable` when they cannot answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class CheckoutRequest:
    order_id: int
    product_name: str
    quantity: int
    unit_amount_minor: int
    currency: str
    expires_at: datetime
    buyer_id: int | None = None  # whose chat an in-chat invoice goes to
    language: str = "en"  # the buyer's, for what the provider shows them
    every: str | None = None  # a subscription's period (store.models.Period); None: one-off
    discount_minor: int = 0  # a coupon's discount on the whole order

    @property
    def amount_minor(self) -> int:
        """What the buyer is charged for the whole order."""
        return self.unit_amount_minor * self.quantity - self.discount_minor


@dataclass(frozen=True, slots=True)
class CheckoutStarted:
    ref: str  # the provider's id for this checkout
    # Where the buyer pays; None when the provider put its own pay button in the buyer's chat
    # (a Telegram invoice), so there is no link to show.
    url: str | None
    expires_at: datetime | None = None  # when the provider closes it, if it says


class CheckoutState(StrEnum):
    OPEN = "open"  # the buyer may still pay
    PAID = "paid"  # money received
    AWAITING = "awaiting"  # a delayed method (bank debit) is settling
    EXPIRED = "expired"  # closed without payment
    FAILED = "failed"  # a delayed payment failed


@dataclass(frozen=True, slots=True)
class Event:
    """A provider event, for the idempotency ledger."""

    provider: str
    id: str
    type: str


@dataclass(frozen=True, slots=True)
class Payment:
    """What a provider reports about an order's money: the input of `fulfil`."""

    order_id: int
    state: CheckoutState
    checkout_ref: str | None = None
    payment_ref: str | None = None  # the handle refunds use
    amount_minor: int | None = None
    currency: str | None = None
    # For a subscription's payment: when the period it pays for ends, and the provider's
    # handle on the subscription when it is not the payment's own (Stripe's `sub_...`).
    period_end: datetime | None = None
    subscription_ref: str | None = None


@runtime_checkable
class SubscriptionGateway(Protocol):
    """A provider that sells subscriptions, and whose subscriptions keyvend can cancel."""

    periods: frozenset[str]  # the product periods (store.models.Period) it can renew
    # Whether it reports a subscription's end itself; if not, one whose period ran out
    # unrenewed is ended by keyvend (`subscriptions.end_lapsed`).
    reports_end: bool

    async def cancel_subscription(self, payment_ref: str) -> None:
        """Stop renewing at the end of the period paid for; safe to repeat."""


class PaymentGateway(Protocol):
    name: str
    # The currency this provider charges in, priced per product in `Product.prices`; None for
    # a provider that charges the product's own price and currency (cards).
    currency: str | None

    async def start_checkout(self, request: CheckoutRequest) -> CheckoutStarted:
        """Open a checkout; the same order id must never open two."""

    async def checkout_status(self, order_id: int, checkout_ref: str | None) -> Payment:
        """Ask the provider what became of an order's checkout."""

    async def cancel_checkout(self, order_id: int, checkout_ref: str | None) -> Payment:
        """Close an open checkout so it can no longer be paid; report its final state."""

    async def refund(self, order_id: int, payment_ref: str, amount_minor: int) -> str:
        """Return an order's money; safe to repeat (returns the same refund)."""

    async def order_of_payment(self, payment_ref: str) -> int | None:
        """Which of this shop's orders a payment belongs to, if any."""

    async def missed_payments(self) -> list[tuple[str, Payment]]:
        """Payments the provider made that may never have reached the shop, each with its
        ledger event id; applying one that did is a harmless duplicate. A provider whose
        checkouts reconciliation asks about one by one returns none."""
