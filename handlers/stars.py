"""Telegram Stars payments as they arrive in updates: the pre-checkout question and the payment.

Telegram asks before it charges (`pre_checkout_query`, to be answered within 10 s): the order
named by the invoice payload is re-checked against the database and the payer, and a no comes
with a reason the buyer reads. The charge then arrives as a message with `successful_payment`,
applied through the same store transition as any paid event and recorded in the ledger under
its `telegram_payment_charge_id`, so a repeat changes nothing. A second charge for an order
that is already paid (two taps on one invoice) is returned at once (`Shop.apply_payment`).
"""

from __future__ import annotations

import logging

from telegram import Update

from handlers.alerts import AlertKind
from handlers.context import KeyvendContext
from handlers.i18n import t, user_language
from handlers.stars_invoice import PROVIDER, order_of_payload, payment
from store import orders
from store.money import STARS
from store.orders import NotPayable
from store.payments import Event

log = logging.getLogger(__name__)


def _refusal(reason: NotPayable, language: str) -> str:
    match reason:
        case NotPayable.EXPIRED:
            return t(language, "This order has expired. Please start a new one with /start.")
        case NotPayable.SOLD_OUT:
            return t(language, "Sorry, this product just sold out.")
        case NotPayable.CLOSED:
            return t(language, "This order is closed already; nothing was charged. See /orders.")
        case NotPayable.AMOUNT:
            return t(language, "The price has changed. Please start a new order with /start.")
    return t(language, "This invoice is not valid any more. Please start a new order with /start.")


async def pre_checkout(update: Update, context: KeyvendContext) -> None:
    """Say yes to a Stars payment only if its order can still be filled as invoiced."""
    query = update.pre_checkout_query
    language = user_language(query.from_user.language_code)
    order_id = order_of_payload(query.invoice_payload)
    reason: NotPayable | None = NotPayable.UNKNOWN
    if order_id is not None and query.currency.lower() == STARS:
        reason = await orders.check_payable(
            context.shop.db,
            order_id,
            checkout_ref=query.invoice_payload,
            payer_id=query.from_user.id,
            amount_minor=query.total_amount,
            currency=query.currency,
        )
    if reason is None:
        await query.answer(ok=True)
        return
    log.info("declined a Stars payment for order %s: %s", order_id, reason.value)
    context.shop.counters.count("keyvend_checkouts_total", outcome=f"declined_{reason.value}")
    await query.answer(ok=False, error_message=_refusal(reason, language))


async def successful_payment(update: Update, context: KeyvendContext) -> None:
    """Apply a Stars charge to its order, exactly once."""
    shop = context.shop
    paid = update.message.successful_payment
    payer = update.effective_user.id
    order_id = order_of_payload(paid.invoice_payload)
    charge = paid.telegram_payment_charge_id
    if order_id is None:
        amount = paid.total_amount
        shop.notifier.alert(
            AlertKind.REFUND,
            lambda lang: t(
                lang,
                "A Stars payment of {n} Stars (charge {charge}) names no order of this shop: "
                "nothing was delivered for it.",
                n=amount,
                charge=charge,
            ),
        )
        return
    await shop.apply_payment(
        PROVIDER,
        payment(
            order_id,
            paid.invoice_payload,
            payer,
            charge,
            paid.total_amount,
            paid.subscription_expiration_date,
        ),
        Event(PROVIDER, charge, "successful_payment"),
    )
