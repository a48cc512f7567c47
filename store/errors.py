"""The domain's exceptions: what can go wrong in the seller's own words.

Each carries just enough to write a one-line answer at the edge; none carries key text.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every domain error."""


class NotFound(StoreError):
    """No such product or order, or it is not the asker's (the answer is the same)."""


class InvalidInput(StoreError):
    """A value the seller or buyer gave cannot be used; the message says why."""


class ProductInactive(StoreError):
    """The product is not on sale."""


class OutOfStock(StoreError):
    def __init__(self, available: int) -> None:
        super().__init__(f"only {available} in stock")
        self.available = available


class OverLimit(StoreError):
    """More than a product allows per order or per buyer."""

    def __init__(self, allowed: int) -> None:
        super().__init__(f"at most {allowed} allowed")
        self.allowed = allowed


class HoldLimit(OverLimit):
    """One buyer's unpaid checkouts would hold more of a product than the shop lets one hold."""

    def __init__(self, allowed: int, cap: int) -> None:
        super().__init__(allowed)
        self.cap = cap


class TooManyUnpaid(StoreError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"already {limit} unpaid orders")
        self.limit = limit


class Blacklisted(StoreError):
    """The buyer may not buy."""


class PaymentUnavailable(StoreError):
    """The payment provider could not start or check a payment right now."""


class CheckoutNotRecorded(StoreError):
    """A payment names an order whose checkout is still being recorded: ask again shortly."""


class SubscriptionNotStarted(CheckoutNotRecorded):
    """A subscription's invoice came before the checkout that started it was applied: the
    checkout's own report decides whose it is."""


class OrderNotPayable(StoreError):
    """The order is past the point where it can be paid or confirmed."""


class DatabaseUnavailable(StoreError):
    """The database cannot be opened (down, unknown, missing, unwritable); the message says
    what to fix and never holds the password of DATABASE_URL."""
