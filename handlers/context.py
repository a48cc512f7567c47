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

from handlers.alerts import AlertKind, AlertText
from handlers.i18n import t
from store.crypto import KeyVault
from store.db import Database
from store.orders import CheckoutPolicy, Outcome, OutOfStockPolicy, Result
from store.payments import PaymentGateway

log = logging.getLogger(__name__)


class Limiter(Protocol):
    async def hit(self, bucket: str, user_id: int) -> datetime | None:
        """Count one action; None if allowed, else when the user may try again."""


class Notifier(Protocol):
    def alert(self, kind: AlertKind, text: AlertText) -> None:
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

    def __post_init__(self) -> None:
        if self.stripe is not None:
            self.gateways.setdefault(self.stripe.name, self.stripe)

    def is_admin(self, user_id: int | None) -> bool:
        return user_id is not None and user_id in self.admin_ids

    def settled(self, result: Result) -> None:
        """Set in motion what a transition's result calls for: a send, a refund, an alert."""
        o = result.outcome
        if o in (Outcome.FULFILLED, Outcome.BACKORDERED, Outcome.REVIEW, Outcome.REFUNDED):
            self.wake_delivery()
        order, sku = result.order_id, result.sku
        if o is Outcome.REFUND_DUE:
            self.wake_refunds()
            self.notifier.alert(
                AlertKind.OUT_OF_STOCK,
                lambda lang: t(
                    lang,
                    "Order #{order} ({sku}) was paid with nothing left to give: refunding.",
                    order=order,
                    sku=sku,
                ),
            )
        elif o is Outcome.BACKORDERED:
            self.notifier.alert(
                AlertKind.OUT_OF_STOCK,
                lambda lang: t(
                    lang,
                    "Order #{order} ({sku}) was paid with nothing left to give: "
                    "backordered, it will be fulfilled at the next /restock.",
                    order=order,
                    sku=sku,
                ),
            )
        elif o is Outcome.REVIEW:
            self.notifier.alert(
                AlertKind.REVIEW,
                lambda lang: t(
                    lang,
                    "Order #{order} ({sku}) is paid and held for review, no keys sent: "
                    "approve or reject it in /review.",
                    order=order,
                    sku=sku,
                ),
            )
        elif o is Outcome.PARTIAL_REFUND:
            self.notifier.alert(
                AlertKind.REFUND,
                lambda lang: t(
                    lang,
                    "Order #{order} was partially refunded in Stripe; keys left as they are.",
                    order=order,
                ),
            )
        elif o is Outcome.REFUNDED:
            self.notifier.alert(
                AlertKind.REFUND,
                lambda lang: t(
                    lang, "Order #{order} was refunded; its keys are revoked.", order=order
                ),
            )
        elif o is Outcome.UNKNOWN_ORDER:
            log.warning("payment event for unknown order %s ignored", result.order_id)
        if result.low_stock:
            left = result.stock_left
            self.notifier.alert(
                AlertKind.LOW_STOCK,
                lambda lang: t(lang, "Low stock: {sku} has {n} left.", sku=sku, n=left),
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
