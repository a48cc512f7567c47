"""Telegram Stars as a payment gateway, through the Bot API.

A checkout is an invoice in `XTR` sent into the buyer's chat (`sendInvoice`, empty provider
token, one price), whose payload is `<order id>:<random token>`: the token is the order's
checkout reference, so only the invoice keyvend sent can pay it. Telegram cannot cancel an
invoice; an order past its time is closed here and its late pre-checkout is declined.

What became of a checkout is read from `getStarTransactions`, which lists the bot's
transactions oldest first: the gateway keeps its place in that list and remembers the
incoming payments of the latest invoices it has read, so each question costs only the
transactions that are new. (After a restart it reads the whole list once.)
A subscription is an invoice link with a 30-day `subscription_period` that Telegram renews
by itself; cancelling it is `editUserStarSubscription`. A refund is `refundStarPayment`; a refund of a charge Telegram already returned counts as
done, so it is safe to repeat. Anything Telegram cannot answer becomes `PaymentUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict
from datetime import timedelta

from telegram import Bot, LabeledPrice
from telegram.error import BadRequest, TelegramError

from handlers import stars_invoice as stars
from handlers.i18n import t
from store.errors import PaymentUnavailable
from store.money import STARS
from store.payments import CheckoutRequest, CheckoutStarted, CheckoutState, Payment

log = logging.getLogger(__name__)

_PAGE = 100  # the most getStarTransactions returns at once
_REMEMBERED = 50_000  # invoices whose payments the gateway keeps in memory
_TITLE = 32  # characters Telegram allows in an invoice title


class StarsGateway:
    name = stars.PROVIDER
    currency = STARS
    periods = frozenset({stars.SUBSCRIPTION_EVERY})
    reports_end = False  # a Stars subscription not renewed just stops paying

    def __init__(self, bot: Bot) -> None:
        self._bot = bot
        self._read = 0  # transactions of the bot's list read so far
        # payload -> [(charge id, payment)], the most recently paid invoices last.
        self._paid: OrderedDict[str, list[tuple[str, Payment]]] = OrderedDict()
        self._reading = asyncio.Lock()

    async def start_checkout(self, request: CheckoutRequest) -> CheckoutStarted:
        if request.currency != STARS or request.buyer_id is None:
            raise PaymentUnavailable("a Stars invoice needs a Stars price and a buyer's chat")
        payload = f"{request.order_id}:{secrets.token_urlsafe(12)}"
        total = request.amount_minor
        if request.every is not None:
            return await self._subscribe(request, payload, total)
        try:
            await self._bot.send_invoice(
                chat_id=request.buyer_id,
                title=request.product_name[:_TITLE],
                description=t(
                    request.language,
                    "Order #{order}: {quantity} × {product}. Your keys arrive in this chat "
                    "right after payment.",
                    order=request.order_id,
                    quantity=request.quantity,
                    product=request.product_name,
                )[:255],
                payload=payload,
                provider_token="",
                currency="XTR",
                prices=[LabeledPrice(request.product_name[:_TITLE], total)],
            )
        except TelegramError as exc:
            raise self._unavailable("send an invoice", exc) from None
        return CheckoutStarted(ref=payload, url=None)

    async def _subscribe(
        self, request: CheckoutRequest, payload: str, total: int
    ) -> CheckoutStarted:
        """A link to a Stars subscription: Telegram renews it every 30 days by itself."""
        if request.every != stars.SUBSCRIPTION_EVERY or total > stars.MAX_SUBSCRIPTION_STARS:
            raise PaymentUnavailable("Stars subscriptions are monthly, at most 10,000 Stars")
        try:
            link = await self._bot.create_invoice_link(
                title=request.product_name[:_TITLE],
                description=t(
                    request.language,
                    "A new key of {product} in this chat every month, while you subscribe.",
                    product=request.product_name,
                )[:255],
                payload=payload,
                provider_token="",
                currency="XTR",
                prices=[LabeledPrice(request.product_name[:_TITLE], total)],
                subscription_period=stars.SUBSCRIPTION_PERIOD,
            )
        except TelegramError as exc:
            raise self._unavailable("make a subscription link", exc) from None
        return CheckoutStarted(ref=payload, url=link)

    async def cancel_subscription(self, payment_ref: str) -> None:
        charge = stars.parse_charge_ref(payment_ref)
        if charge is None:
            raise PaymentUnavailable("no Stars subscription to cancel")
        try:
            await self._bot.edit_user_star_subscription(charge[0], charge[1], is_canceled=True)
        except TelegramError as exc:
            raise self._unavailable("cancel a subscription", exc) from None

    async def checkout_status(self, order_id: int, checkout_ref: str | None) -> Payment:
        await self._catch_up()
        for _, payment in self._paid.get(checkout_ref or "", []):
            return payment  # the first charge pays the order; later ones are returned
        return Payment(order_id=order_id, state=CheckoutState.OPEN, checkout_ref=checkout_ref)

    async def cancel_checkout(self, order_id: int, checkout_ref: str | None) -> Payment:
        # An invoice cannot be withdrawn; a closed order's pre-checkout is declined instead.
        payment = await self.checkout_status(order_id, checkout_ref)
        if payment.state is CheckoutState.OPEN:
            return Payment(
                order_id=order_id, state=CheckoutState.EXPIRED, checkout_ref=checkout_ref
            )
        return payment

    async def refund(self, order_id: int, payment_ref: str, amount_minor: int) -> str:
        charge = stars.parse_charge_ref(payment_ref)
        if charge is None:
            raise PaymentUnavailable(f"order {order_id} has no Stars charge to refund")
        user_id, charge_id = charge
        try:
            await self._bot.refund_star_payment(user_id, charge_id)
        except BadRequest as exc:
            if "ALREADY_REFUNDED" not in str(exc).upper():
                raise self._unavailable("refund", exc) from None
        except TelegramError as exc:
            raise self._unavailable("refund", exc) from None
        return charge_id

    async def order_of_payment(self, payment_ref: str) -> int | None:
        await self._catch_up()
        for payments in self._paid.values():
            for _, payment in payments:
                if payment.payment_ref == payment_ref:
                    return payment.order_id
        return None

    async def missed_payments(self) -> list[tuple[str, Payment]]:
        await self._catch_up()
        return [entry for payments in self._paid.values() for entry in payments]

    async def _catch_up(self) -> None:
        """Read the bot's transactions that are new since the last look."""
        async with self._reading:
            while True:
                try:
                    page = await self._bot.get_star_transactions(offset=self._read, limit=_PAGE)
                except TelegramError as exc:
                    raise self._unavailable("list Star transactions", exc) from None
                for transaction in page.transactions:
                    self._remember(transaction)
                self._read += len(page.transactions)
                if len(page.transactions) < _PAGE:
                    return

    def _remember(self, transaction) -> None:
        source = transaction.source
        # Incoming payments come from a user; refunds go to one (`receiver`), and are not ours.
        if source is None or source.type != "user" or transaction.receiver is not None:
            return
        payload = getattr(source, "invoice_payload", None)
        order_id = stars.order_of_payload(payload)
        if order_id is None:
            return
        period = getattr(source, "subscription_period", None)
        seconds = period.total_seconds() if isinstance(period, timedelta) else period
        payment = stars.payment(
            order_id,
            payload,
            source.user.id,
            transaction.id,
            transaction.amount,
            transaction.date + timedelta(seconds=seconds) if seconds else None,
        )
        self._paid.setdefault(payload, []).append((transaction.id, payment))
        self._paid.move_to_end(payload)
        if len(self._paid) > _REMEMBERED:
            # Long settled: a lost update is found within minutes, not after this many sales.
            self._paid.popitem(last=False)

    @staticmethod
    def _unavailable(what: str, exc: TelegramError) -> PaymentUnavailable:
        log.warning("Telegram could not %s: %s", what, type(exc).__name__)
        return PaymentUnavailable(f"Telegram could not {what}")
