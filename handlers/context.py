"""What handlers are given to work with: the shop's services, and the PTB context carrying them.

`Shop` is assembled once by the composition root (bot/app.py) and reaches Telegram handlers
through `KeyvendContext.shop` and HTTP routes through `request.app[SHOP]`. The rate limiter,
the admin notifier and the workers are bot/ concerns; handlers see them only through the
small protocols below.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from aiohttp import web
from telegram.ext import Application, CallbackContext, ExtBot

from store import orders
from store.crypto import KeyVault
from store.db import Database
from store.errors import PaymentUnavailable
from store.orders import CheckoutPolicy, Event, Outcome, OutOfStockPolicy, Result
from store.payments import Payment, PaymentGateway

log = logging.getLogger(__name__)


class Limiter(Protocol):
    async def hit(self, bucket: str, user_id: int) -> datetime | None:
        """Count one action; None if allowed, else when the user may try again."""


class Notifier(Protocol):
    def alert(self, kind: str, text: str) -> None:
        """Tell the admins something needs attention (rate-limited into summaries)."""


class Counters(Protocol):
    def count(self, name: str, **labels: str) -> None:
        """Add one to a Prometheus counter."""


@dataclass
class Shop:
    db: Database
    vault: KeyVault
    admin_ids: frozenset[int]
    checkout_policy: CheckoutPolicy
    stock_policy: OutOfStockPolicy
    limiter: Limiter
    notifier: Notifier
    counters: Counters
    key_message_ttl: timedelta
    stripe: PaymentGateway | None = None
    stripe_webhook_secret: str | None = None
    blacklist_on_dispute: bool = False
    wake_delivery: Callable[[], None] = lambda: None
    wake_refunds: Callable[[], None] = lambda: None
    wake_client_outbox: Callable[[], None] = lambda: None  # client webhooks and e-mails
    gateways: dict[str, PaymentGateway] = field(default_factory=dict)
    paysupport_text: str | None = None  # the seller's; None: the default, translated
    # Renewal shortfalls the admins were last told about, by SKU (so they hear of each once).
    renewal_warnings: dict[str, int] = field(default_factory=dict)
    terms_text: str | None = None

    def __post_init__(self) -> None:
        if self.stripe is not None:
            # The card provider is offered first.
            self.gateways = {self.stripe.name: self.stripe, **self.gateways}

    def is_admin(self, user_id: int | None) -> bool:
        return user_id is not None and user_id in self.admin_ids

    async def apply_payment(self, provider: str, payment: Payment, event: Event) -> Result:
        """Apply a provider's charge to its order (or the next period of the subscription it
        started), then react; a second charge for an order that another charge paid already
        goes straight back to the buyer."""
        result = await orders.pay_period(self.db, payment, self.stock_policy, event=event)
        self.settled(result)
        if result.outcome is Outcome.UNCHANGED and payment.payment_ref is not None:
            state = await orders.order_state(self.db, payment.order_id)
            if state is not None and state.payment_ref != payment.payment_ref:
                await self._return_extra_charge(provider, payment)
        return result

    async def _return_extra_charge(self, provider: str, payment: Payment) -> None:
        gateway = self.gateways.get(provider)
        try:
            if gateway is None:
                raise PaymentUnavailable(f"{provider} payments are off")
            await gateway.refund(payment.order_id, payment.payment_ref, payment.amount_minor or 0)
        except PaymentUnavailable:
            self.notifier.alert(
                "refund",
                f"Order #{payment.order_id} was paid twice ({provider}); the second payment "
                "could not be returned automatically.",
            )
            return
        self.notifier.alert(
            "refund",
            f"Order #{payment.order_id} was paid twice ({provider}); the second payment was "
            "returned.",
        )

    def settled(self, result: Result) -> None:
        """Set in motion what a transition's result calls for: a send, a refund, an alert."""
        o = result.outcome
        if o in (Outcome.FULFILLED, Outcome.BACKORDERED, Outcome.REVIEW, Outcome.REFUNDED):
            self.wake_delivery()
        if o is Outcome.REFUND_DUE:
            self.wake_refunds()
            self.notifier.alert(
                "out_of_stock",
                f"Order #{result.order_id} ({result.sku}) was paid with nothing left to give: refunding.",
            )
        elif o is Outcome.BACKORDERED:
            self.notifier.alert(
                "out_of_stock",
                f"Order #{result.order_id} ({result.sku}) was paid with nothing left to give: "
                "backordered, it will be fulfilled at the next /restock.",
            )
        elif o is Outcome.REVIEW:
            self.notifier.alert(
                "review",
                f"Order #{result.order_id} ({result.sku}) was paid a different amount or currency "
                "than ordered: held for review, no keys sent.",
            )
        elif o is Outcome.PARTIAL_REFUND:
            self.notifier.alert(
                "refund",
                f"Order #{result.order_id} was partially refunded in Stripe; keys left as they are.",
            )
        elif o is Outcome.REFUNDED:
            self.notifier.alert(
                "refund", f"Order #{result.order_id} was refunded; its keys are revoked."
            )
        elif o is Outcome.UNKNOWN_ORDER:
            log.warning("payment event for unknown order %s ignored", result.order_id)
        if result.low_stock:
            self.notifier.alert(
                "low_stock", f"Low stock: {result.sku} has {result.stock_left} left."
            )
        self.counters.count("keyvend_transitions_total", outcome=o.value)


SHOP: web.AppKey[Shop] = web.AppKey("shop", Shop)


class KeyvendContext(CallbackContext[ExtBot, dict, dict, dict]):
    """PTB's context with the shop's services one attribute away."""

    def __init__(
        self, application: Application, chat_id: int | None = None, user_id: int | None = None
    ) -> None:
        super().__init__(application=application, chat_id=chat_id, user_id=user_id)

    @property
    def shop(self) -> Shop:
        return self.application.bot_data["shop"]
