"""What a Telegram Stars invoice and charge say, as plain values (no Telegram library needed).

The invoice payload is `<order id>:<random token>`; the token is the order's checkout
reference, unguessable, so a payload is only ever valid for the invoice keyvend sent. A
charge is refunded by (payer, `telegram_payment_charge_id`), so that pair is the payment
reference an order records.
"""

from __future__ import annotations

from datetime import datetime

from store.errors import InvalidInput
from store.money import STARS
from store.payments import CheckoutState, Payment

MAX_STARS = 100_000  # the most one Stars invoice may ask for
MAX_SUBSCRIPTION_STARS = 10_000  # the most a Stars subscription may charge a period
SUBSCRIPTION_PERIOD = 2_592_000  # seconds: 30 days, the only period Telegram offers
SUBSCRIPTION_EVERY = "month"  # the product period (store.models.Period) that matches it
PROVIDER = "stars"
MAX_PAYLOAD = 128  # bytes, Telegram's limit on an invoice payload


def stars_price(stars: int, *, every: str | None) -> dict[str, tuple[int, str] | None]:
    """A product's Stars price as `ProductChanges.prices` takes it: `stars` a unit, or not sold
    for Stars at all for 0; InvalidInput past what Telegram lets one invoice ask."""
    if stars == 0:
        return {PROVIDER: None}
    top = MAX_SUBSCRIPTION_STARS if every else MAX_STARS
    if not 1 <= stars <= top:
        raise InvalidInput(f"a Stars price must be a whole number of Stars from 1 to {top}")
    return {PROVIDER: (stars, STARS)}


def order_of_payload(payload: object) -> int | None:
    """The order an invoice payload names, if it is one of keyvend's; None otherwise."""
    if not isinstance(payload, str) or len(payload) > MAX_PAYLOAD:
        return None
    order, sep, token = payload.partition(":")
    if not sep or not token or not order.isdigit() or len(order) > 9:
        return None
    return int(order)


def charge_ref(user_id: int, charge_id: str) -> str:
    """The handle a refund of a Stars charge needs: who paid, and the charge."""
    return f"{user_id}:{charge_id}"


def parse_charge_ref(payment_ref: str) -> tuple[int, str] | None:
    user, sep, charge = payment_ref.partition(":")
    if not sep or not charge or not user.isdigit():
        return None
    return int(user), charge


def payment(
    order_id: int,
    payload: str,
    payer_id: int,
    charge_id: str,
    total_amount: int,
    period_end: datetime | None = None,
) -> Payment:
    """A Stars charge as the state machine's report of a paid order (or period)."""
    return Payment(
        period_end=period_end,
        order_id=order_id,
        state=CheckoutState.PAID,
        checkout_ref=payload,
        payment_ref=charge_ref(payer_id, charge_id),
        amount_minor=total_amount,
        currency=STARS,
    )
