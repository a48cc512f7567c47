"""What handlers are given to work with: the shop's services, and the PTB context carrying them.

`Shop` is the service layer: one method per use case (checkout, fulfil, close unpaid,
confirm, refund, dispute, restock, a provider's payment or renewal, a buyer's key report
and the admins' answer to it), each running the store
transition and then its reactions (`settled`: waking the delivery worker or the refunds,
alerts, metrics), so no handler or job has a follow-up step to remember. It is assembled once by the composition root (bot/app.py) and reaches Telegram handlers
through `KeyvendContext.shop` and HTTP routes through `request.app[SHOP]`. The rate limiter,
the admin notifier and the workers are bot/ concerns; handlers see them only through the
small protocols below.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from aiohttp import web
from telegram.ext import Application, CallbackContext, ExtBot

from handlers import render
from handlers.alerts import AlertButtons, AlertKind, AlertText
from handlers.i18n import t
from store import (
    catalogue,
    coupons,
    inventory,
    key_reports,
    orders,
    reconciliation,
    review,
    subscriptions,
)
from store.coupons import CouponView
from store.crypto import KeyVault
from store.db import Database
from store.errors import (
    NotFound,
    OrderNotPayable,
    PaymentUnavailable,
    StoreError,
    SubscriptionNotStarted,
)
from store.inventory import ParsedKeys, RestockReport
from store.models import KeyReportStatus
from store.orders import CheckoutPolicy, Outcome, OutOfStockPolicy, Result
from store.payments import CheckoutState, Event, Payment, PaymentGateway, SubscriptionGateway

if TYPE_CHECKING:
    from handlers.paylinks import PayLinks

log = logging.getLogger(__name__)


class Limiter(Protocol):
    async def hit(self, bucket: str, user_id: int) -> datetime | None:
        """Count one action; None if allowed, else when the user may try again."""


class Notifier(Protocol):
    def alert(self, kind: AlertKind, text: AlertText, buttons: AlertButtons | None = None) -> None:
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
    # The card provider: offered first, and the one a pay button naming no provider means.
    card: PaymentGateway | None = None
    blacklist_on_dispute: bool = False
    wake_delivery: Callable[[], None] = lambda: None
    wake_refunds: Callable[[], None] = lambda: None
    wake_client_outbox: Callable[[], None] = lambda: None  # client webhooks and e-mails
    gateways: dict[str, PaymentGateway] = field(default_factory=dict)
    paysupport_text: str | None = None  # the seller's; None: the default, translated
    # Renewal shortfalls the admins were last told about, by SKU (so they hear of each once).
    renewal_warnings: dict[str, int] = field(default_factory=dict)
    terms_text: str | None = None
    # Set (with PUBLIC_URL): the card's pay button is a link that opens the checkout itself.
    pay_links: PayLinks | None = None
    # The seller allows Telegram's paid broadcast for key deliveries and flash-sale answers.
    paid_broadcast: bool = False

    def __post_init__(self) -> None:
        if self.card is not None:
            self.gateways = {self.card.name: self.card, **self.gateways}

    def is_admin(self, user_id: int | None) -> bool:
        return user_id is not None and user_id in self.admin_ids

    # ------------------------------------------------------------ use cases
    # Each runs one store transition and then its reactions (`settled`): no caller follows
    # up by hand.

    async def checkout(
        self,
        gateway: PaymentGateway,
        *,
        buyer_id: int,
        language: str,
        product_id: int,
        quantity: int,
        coupon: str | None = None,
    ) -> orders.CheckoutResult:
        """Reserve the keys (and a use of the `coupon` code, charging the discounted price)
        and open the provider's checkout; StoreError (CouponRefused for the code) says why not."""
        try:
            sale = await orders.checkout(
                self.db,
                gateway,
                buyer_id=buyer_id,
                language=language,
                product_id=product_id,
                quantity=quantity,
                policy=self.checkout_policy,
                coupon=coupon,
            )
        except StoreError as exc:
            self.counters.count("keyvend_checkouts_total", outcome=type(exc).__name__)
            raise
        self.counters.count("keyvend_checkouts_total", outcome="started")
        return sale

    async def coupon_for(self, code: str, product_id: int) -> CouponView:
        """The coupon a buyer's code names, if it applies to the product now (CouponRefused
        says why not); nothing is held until the checkout."""
        return await coupons.find_for(self.db, code, product_id)

    async def add_coupon(
        self, code: str, *, admin_id: int | None, **terms: str | int
    ) -> CouponView:
        """A new discount code (terms as `coupons.add_coupon` takes them), audited."""
        return await coupons.add_coupon(self.db, code, admin_id=admin_id, **terms)

    async def coupons(self) -> list[CouponView]:
        """Every discount code with its uses."""
        return await coupons.list_coupons(self.db)

    async def disable_coupon(self, code: str, *, admin_id: int | None) -> CouponView:
        """Stop new checkouts taking a code (open ones keep their price), audited."""
        return await coupons.disable_coupon(self.db, code, admin_id=admin_id)

    async def fulfil(self, payment: Payment, event: Event | None = None) -> Result:
        """A provider says an order was paid (CheckoutNotRecorded: too early to tell)."""
        return self.settled(await orders.fulfil(self.db, payment, self.stock_policy, event=event))

    async def awaiting_payment(
        self, order_id: int, *, checkout_ref: str | None, event: Event
    ) -> Result:
        """A delayed payment method is settling: hold the keys for a while longer."""
        return self.settled(
            await orders.awaiting_payment(
                self.db,
                order_id,
                checkout_ref=checkout_ref,
                event=event,
                recheck_after=self.checkout_policy.ttl * 12,
            )
        )

    async def close_unpaid(
        self,
        order_id: int,
        state: CheckoutState,
        *,
        checkout_ref: str | None = None,
        event: Event | None = None,
    ) -> Result:
        """A checkout closed unpaid: its keys go back on sale."""
        return self.settled(
            await orders.close_unpaid(
                self.db, order_id, state, checkout_ref=checkout_ref, event=event
            )
        )

    async def confirm(
        self, order_id: int, *, close_if_open: bool = False, now: datetime | None = None
    ) -> Result:
        """Ask the order's provider what became of it and apply the answer."""
        return self.settled(
            await orders.confirm(
                self.db,
                self.gateways,
                order_id,
                self.stock_policy,
                close_if_open=close_if_open,
                now=now,
            )
        )

    async def refund(self, order_id: int, *, admin_id: int | None = None) -> Result:
        """Return an order's money through its own provider, then revoke its keys and tell
        the buyer; NotFound, OrderNotPayable or PaymentUnavailable say why not."""
        paid = await reconciliation.paid_order(self.db, order_id)
        await self._gateway(paid.provider).refund(
            order_id, paid.payment_ref, paid.paid_amount_minor
        )
        return self.settled(await orders.record_refund(self.db, order_id, admin_id=admin_id))

    async def reject_review(self, order_id: int, *, admin_id: int) -> bool:
        """Reject an order held for review: its money goes back (True: returned already)."""
        await review.reject(self.db, order_id, admin_id=admin_id)
        return await self._refund_owed(order_id)

    async def report_key(
        self, order_id: int, key_id: int, *, buyer_id: int, reason: str
    ) -> key_reports.ReportResult:
        """A buyer says a key of their order does not work: replace it at once if its product
        says so, else put it to the admins with their three answers."""
        filed = await key_reports.report(self.db, order_id, key_id, buyer_id, reason)
        if filed.status is KeyReportStatus.REPLACED:
            self.wake_delivery()
            return filed
        item = await key_reports.get(self.db, filed.report_id)
        self.notifier.alert(
            AlertKind.KEY_REPORT,
            lambda lang: render.report_alert(item, lang),
            lambda lang: render.report_decisions(item.report_id, lang),
        )
        return filed

    async def replace_key(self, report_id: int, *, admin_id: int) -> key_reports.ReportResult:
        """Revoke a reported key for good and deliver a new one from stock through the
        outbox; OutOfStock (nothing changed) without one, AlreadyDecided if answered."""
        replaced = await key_reports.replace(self.db, report_id, admin_id=admin_id)
        self.wake_delivery()
        return replaced

    async def refund_reported(self, report_id: int, *, admin_id: int) -> bool:
        """Answer a report with the order's money back (True: returned already)."""
        decided = await key_reports.refund(self.db, report_id, admin_id=admin_id)
        return await self._refund_owed(decided.order_id)

    async def reject_report(self, report_id: int, *, admin_id: int) -> key_reports.ReportResult:
        """Answer a report with "the key works": the buyer is told through the outbox."""
        rejected = await key_reports.reject(self.db, report_id, admin_id=admin_id)
        self.wake_delivery()
        return rejected

    async def _refund_owed(self, order_id: int) -> bool:
        """Make a refund an admin's decision made owed, at once through `refund`. The decision
        (taken once, audited) is the admin's action; this is its consequence, so it writes no
        audit row of its own. A provider out of reach leaves it to the refund job's retries."""
        try:
            await self.refund(order_id)
        except PaymentUnavailable:
            self.wake_refunds()
            return False
        return True

    async def make_owed_refunds(self) -> list[Result]:
        """Return the money of orders that were paid with nothing left to give."""
        results = []
        for owed in await reconciliation.refunds_due(self.db):
            gateway = self.gateways.get(owed.provider)
            if gateway is None or owed.payment_ref is None:
                log.error(
                    "order %s needs a refund that cannot be made automatically", owed.order_id
                )
                continue
            try:
                await gateway.refund(owed.order_id, owed.payment_ref, owed.paid_amount_minor)
            except PaymentUnavailable:
                continue  # tried again on the next pass
            results.append(self.settled(await orders.record_refund(self.db, owed.order_id)))
        return results

    async def refunded(
        self, named: int | None, *, payment_ref: str | None, full: bool, event: Event
    ) -> Result:
        """The provider reports money returned (a refund made outside keyvend)."""

        async def record(paid: Payment | None) -> Result:
            return await orders.record_refund(
                self.db, named, payment_ref=payment_ref, full=full, event=event, paid=paid
            )

        return self.settled(await self._verified(record))

    async def disputed(self, *, payment_ref: str | None, event: Event, reason: str) -> Result:
        """The buyer disputed a charge: flag the order, alert the admins with the evidence."""

        async def record(paid: Payment | None, named: int | None = None) -> Result:
            found = await orders.record_dispute(
                self.db,
                named,
                payment_ref=payment_ref,
                blacklist=self.blacklist_on_dispute,
                event=event,
                paid=paid,
            )
            if found.result.outcome is Outcome.DISPUTED:
                self.notifier.alert(AlertKind.DISPUTE, _dispute_alert(found, reason))
            return found.result

        result = await record(None)
        if result.outcome is Outcome.UNKNOWN_ORDER and payment_ref:
            # A dispute may carry no order id: the payment names the order (a hint only: the
            # order's own checkout must confirm the payment is its own).
            named = await self._gateway(event.provider).order_of_payment(payment_ref)
            result = await self._verified(lambda paid: record(paid, named))
        return self.settled(result)

    async def restock(
        self,
        sku: str,
        keys: ParsedKeys | Iterable[ParsedKeys],
        *,
        source: str,
        admin_id: int | None,
        progress: inventory.Progress | None = None,
    ) -> RestockReport:
        """Import keys while the shop serves; backorders they fill are fulfilled and
        delivered like any sale."""
        report = await inventory.restock(
            self.db,
            self.vault,
            sku,
            keys,
            source=source,
            admin_id=admin_id,
            progress=progress,
            live=True,
        )
        for order_id in report.backorders_fulfilled:
            self.settled(Result(Outcome.FULFILLED, order_id, sku=sku))
        if report.backorders_fulfilled:
            product = await catalogue.get_product(self.db, sku=sku)
            left = report.available
            if left <= product.low_stock_threshold:
                self.notifier.alert(
                    AlertKind.LOW_STOCK,
                    lambda lang: t(
                        lang,
                        "Low stock: {sku} has {n} left after filling backorders.",
                        sku=sku,
                        n=left,
                    ),
                )
        return report

    async def _verified(self, record: Callable[[Payment | None], Awaitable[Result]]) -> Result:
        """Record a refund or dispute; if its order's payment is not recorded yet (the payment
        event is late or lost), ask the provider about the order's own checkout and record it
        with that report, so a payment of another integration never touches our order."""
        result = await record(None)
        if result.outcome is Outcome.UNVERIFIED:
            paid = await reconciliation.provider_report(self.db, self.gateways, result.order_id)
            result = await record(paid)
            if result.outcome is Outcome.UNVERIFIED:  # no checkout to ask about
                result = Result(Outcome.FOREIGN, result.order_id)
        return result

    def _gateway(self, provider: str) -> PaymentGateway:
        gateway = self.gateways.get(provider)
        if gateway is None:
            raise PaymentUnavailable(f"{provider} payments are off in this shop")
        return gateway

    async def apply_payment(self, provider: str, payment: Payment, event: Event) -> Result:
        """Apply a provider's charge to its order (or the next period of the subscription it
        started), then react; a second charge for an order that another charge paid already
        goes straight back to the buyer."""
        result = self.settled(
            await orders.pay_period(self.db, payment, self.stock_policy, event=event)
        )
        if result.outcome is Outcome.UNCHANGED and payment.payment_ref is not None:
            state = await reconciliation.order_state(self.db, payment.order_id)
            if state is not None and state.payment_ref != payment.payment_ref:
                await self._return_extra_charge(provider, payment)
        return result

    async def renew(self, provider: str, payment: Payment, event: Event) -> Result:
        """Apply a period a provider billed by itself (an invoice naming the subscription, not
        the checkout). The first period's invoice may come before the checkout's own event:
        then the checkout, asked at the provider, starts the subscription and decides whether
        the invoice belongs to it."""
        try:
            return await self.apply_payment(provider, payment, event)
        except SubscriptionNotStarted:
            pass
        try:
            await self.confirm(payment.order_id)
        except (NotFound, OrderNotPayable):
            pass  # settled meanwhile, or not ours to settle: the second try says which
        try:
            return await self.apply_payment(provider, payment, event)
        except SubscriptionNotStarted:
            return Result(Outcome.FOREIGN, payment.order_id)

    async def subscription_past_due(
        self, order_id: int, subscription_ref: str, *, payment_ref: str, event: Event
    ) -> Result:
        """The provider could not collect a period: past due, and the buyer is told."""
        return self.settled(
            await subscriptions.fall_behind(
                self.db, order_id, subscription_ref, payment_ref=payment_ref, event=event
            )
        )

    async def subscription_ended(
        self, order_id: int, subscription_ref: str, *, event: Event
    ) -> Result:
        """The provider ended a subscription: no more keys, and the buyer is told."""
        return self.settled(
            await subscriptions.end(self.db, order_id, subscription_ref, event=event)
        )

    async def cancel_subscription(self, subscription_id: int, buyer_id: int) -> None:
        """Stop one of the buyer's subscriptions at the end of the period paid: the provider
        first, then the shop's own record; NotFound, OrderNotPayable (ended) or
        PaymentUnavailable say why not."""
        target = await subscriptions.to_cancel(self.db, subscription_id, buyer_id)
        gateway = self.gateways.get(target.provider)
        if not isinstance(gateway, SubscriptionGateway) or target.payment_ref is None:
            raise PaymentUnavailable(f"{target.provider} subscriptions cannot be cancelled here")
        await gateway.cancel_subscription(target.payment_ref)
        await subscriptions.mark_cancelled(self.db, subscription_id)

    async def _return_extra_charge(self, provider: str, payment: Payment) -> None:
        gateway = self.gateways.get(provider)
        try:
            if gateway is None:
                raise PaymentUnavailable(f"{provider} payments are off")
            await gateway.refund(payment.order_id, payment.payment_ref, payment.amount_minor or 0)
        except PaymentUnavailable:
            self.notifier.alert(
                AlertKind.REFUND,
                lambda lang: t(
                    lang,
                    "Order #{order} was paid twice; the second payment could not be returned "
                    "automatically.",
                    order=payment.order_id,
                ),
            )
            return
        self.notifier.alert(
            AlertKind.REFUND,
            lambda lang: t(
                lang,
                "Order #{order} was paid twice; the second payment was returned.",
                order=payment.order_id,
            ),
        )

    def settled(self, result: Result) -> Result:
        """Set in motion what a transition's result calls for: a send, a refund, an alert."""
        o = result.outcome
        if o in (
            Outcome.FULFILLED,
            Outcome.BACKORDERED,
            Outcome.REVIEW,
            Outcome.REFUNDED,
            Outcome.PAST_DUE,
            Outcome.ENDED,
        ):
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
        return result


def _dispute_alert(dispute: orders.DisputeResult, reason: str) -> AlertText:
    result, reason = dispute.result, reason[:40]

    def text(language: str) -> str:
        lines = [
            t(
                language,
                "Dispute on order #{order} by buyer {buyer}: reason {reason}.",
                order=result.order_id,
                buyer=result.buyer_id,
                reason=reason,
            ),
            t(language, "Key reveals (evidence):")
            if dispute.reveals
            else t(language, "The keys were never shown to the buyer."),
        ]
        lines += [f"- {r.at:%Y-%m-%d %H:%M:%S} UTC, {r.how}" for r in dispute.reveals]
        if dispute.blacklisted:
            lines.append(t(language, "The buyer is now blocked from buying."))
        return "\n".join(lines)

    return text


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
