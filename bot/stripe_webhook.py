"""`POST /stripe/webhook`: Stripe's signed events, turned into the shop's use cases.

Half of the Stripe adapter (bot/stripe_gateway.py is the other): everything that knows what a
Stripe event or Checkout Session looks like is here, and what it means for an order is one
call of the service layer (`Shop`). The route reads at most 1 MiB of raw body, verifies the `Stripe-Signature` header on it
(HMAC-SHA256, 300 s tolerance either way: the SDK refuses only old timestamps, so one dated
in the future is refused here) before parsing anything, and applies the event through one
service call whose transaction also records the event id. It answers 2xx only after that
commit, so a crash before it makes Stripe send the event again, and a repeat changes
nothing. Bad input is a 4xx with a one-line reason, never a 5xx; unknown event types and
sessions that are not keyvend's are acknowledged and ignored. An event that names one of our
orders but not the checkout or payment recorded for it (another integration on the same
Stripe account) is acknowledged, ignored, logged with its ids and counted in
`keyvend_webhook_ignored_total`.

A subscription (Checkout in `subscription` mode) is billed by Stripe itself: `invoice.paid`
is one period (one key per invoice, however often and in whatever order it comes; the first
invoice is the checkout's own payment), `invoice.payment_failed` makes it past due and
`customer.subscription.deleted` ends it. Each names its order through the subscription's
metadata; one about a subscription that order did not start is ignored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from functools import partial
from typing import Any

import stripe
from aiohttp import web

from handlers.context import SHOP, Shop
from store.errors import CheckoutNotRecorded, PaymentUnavailable
from store.orders import Outcome, Result
from store.payments import CheckoutState, Event, Payment

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
MAX_ID = 255  # the width of the id columns
MAX_AMOUNT = 99_999_999  # Stripe's per-charge ceiling (store.money)
TOLERANCE = 300
PROVIDER = "stripe"
# The webhook signing secret (whsec_...), set on the web app when Stripe is configured.
SIGNING_SECRET: web.AppKey[str] = web.AppKey("stripe_signing_secret", str)
# How long a payment for an order whose checkout is still being recorded waits for it (the
# recording commits within milliseconds of Stripe answering) before Stripe is told to retry.
_RECORDING_WAITS = (0.05, 0.1, 0.2, 0.4, 0.8)


INVOICE_PREFIX = "in_"  # a payment reference that is a subscription's invoice


class BadEvent(ValueError):
    """A signed event whose content keyvend cannot read."""


def payment_from_session(session: dict[str, Any]) -> Payment | None:
    """What a Checkout Session says about its order's money; None if it is not keyvend's."""
    if (
        not isinstance(session, dict)
        or session.get("object", "checkout.session") != "checkout.session"
    ):
        raise BadEvent("data.object is not a checkout session")
    order_id = _order_id(session.get("client_reference_id")) or _order_id(
        (session.get("metadata") or {}).get("order_id")
        if isinstance(session.get("metadata"), dict)
        else None
    )
    if order_id is None:
        return None
    status, paid = session.get("status"), session.get("payment_status")
    if status == "complete" and paid in ("paid", "no_payment_required"):
        state = CheckoutState.PAID
    elif status == "complete":
        state = CheckoutState.AWAITING
    elif status == "expired":
        state = CheckoutState.EXPIRED
    else:
        state = CheckoutState.OPEN
    amount, currency = _amount(session.get("amount_total")), _currency(session.get("currency"))
    if session.get("mode") == "subscription":
        # Its money is the subscription's first invoice; the subscription is what to cancel.
        payment_ref, subscription_ref = (
            _ref(session.get("invoice")),
            _ref(session.get("subscription")),
        )
    else:
        payment_ref, subscription_ref = _ref(session.get("payment_intent")), None
    return Payment(
        order_id=order_id,
        state=state,
        checkout_ref=_str(session.get("id")),
        payment_ref=payment_ref,
        amount_minor=amount,
        currency=currency,
        subscription_ref=subscription_ref,
    )


def payment_from_invoice(invoice: dict[str, Any]) -> Payment | None:
    """A paid (or unpaid) period of a subscription, read from its invoice: the order the
    subscription began with comes from the subscription's metadata, which Stripe copies onto
    each invoice. None for an invoice of no keyvend subscription."""
    if invoice.get("object") != "invoice":
        raise BadEvent("data.object is not an invoice")
    # Stripe's API since 2025-03 names the subscription under `parent`; before, at the top.
    details = _dict(_dict(invoice.get("parent")).get("subscription_details")) or _dict(
        invoice.get("subscription_details")
    )
    subscription = _ref(details.get("subscription") or invoice.get("subscription"))
    order_id = _order_id(_dict(details.get("metadata")).get("order_id"))
    invoice_id = _str(invoice.get("id"))
    if order_id is None or subscription is None or invoice_id is None:
        return None
    period_end = None
    lines = _dict(invoice.get("lines")).get("data")
    for line in lines if isinstance(lines, list) else []:
        end = _dict(_dict(line).get("period")).get("end")
        if isinstance(end, int) and not isinstance(end, bool) and 0 < end < 2**34:
            period_end = max(period_end or 0, end)
    return Payment(
        order_id=order_id,
        state=CheckoutState.PAID if invoice.get("status") == "paid" else CheckoutState.OPEN,
        payment_ref=invoice_id,
        amount_minor=_amount(invoice.get("amount_paid")),
        currency=_currency(invoice.get("currency")),
        period_end=datetime.fromtimestamp(period_end, UTC) if period_end else None,
        subscription_ref=subscription,
    )


def _amount(value: object) -> int | None:
    if value is not None and (
        not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_AMOUNT
    ):
        raise BadEvent("an amount is not one Stripe can charge")
    return value


def _currency(value: object) -> str | None:
    if value is not None and not (isinstance(value, str) and len(value) == 3 and value.isalpha()):
        raise BadEvent("currency is not a three-letter code")
    return value.lower() if value else None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _order_id(value: object) -> int | None:
    if isinstance(value, str) and value.isdigit() and len(value) <= 9:
        return int(value)
    return None


def _str(value: object) -> str | None:
    if value is not None and not (isinstance(value, str) and len(value) <= MAX_ID):
        raise BadEvent("an id is not a string of at most 255 characters")
    return value


def _ref(value: object) -> str | None:
    """An id that may arrive bare or expanded into an object."""
    if isinstance(value, dict):
        value = value.get("id")
    return _str(value)


async def stripe_webhook(request: web.Request) -> web.Response:
    """Verify, parse and apply one Stripe event."""
    shop = request.app[SHOP]
    secret = request.app.get(SIGNING_SECRET)
    if secret is None:
        return _reply(404, "Stripe is not configured")
    if request.content_length is not None and request.content_length > MAX_BODY:
        return _reply(413, "body over 1 MiB")
    # read() returns what has arrived so far, not the whole body: keep reading to the end.
    received = bytearray()
    while chunk := await request.content.read(MAX_BODY + 1 - len(received)):
        received += chunk
        if len(received) > MAX_BODY:
            return _reply(413, "body over 1 MiB")
    body = bytes(received)
    header = request.headers.get("Stripe-Signature")
    if not header:
        return _reply(400, "missing Stripe-Signature header")
    if not header.isascii():  # the SDK's compare_digest raises TypeError on non-ASCII text
        shop.counters.count("keyvend_webhook_rejected_total", reason="signature")
        return _reply(400, "invalid signature")
    try:
        payload = body.decode("utf-8")
        stripe.WebhookSignature.verify_header(payload, header, secret, TOLERANCE)
    except (UnicodeDecodeError, stripe.SignatureVerificationError):
        shop.counters.count("keyvend_webhook_rejected_total", reason="signature")
        return _reply(400, "invalid signature")
    if _signed_at(header) > time.time() + TOLERANCE:
        # A valid signature dated ahead would stay replayable until long after it was made.
        shop.counters.count("keyvend_webhook_rejected_total", reason="signature")
        return _reply(400, "signature timestamp is in the future")
    try:
        event = json.loads(payload)
        if not isinstance(event, dict):
            raise BadEvent("event is not a JSON object")
        result = await _apply(shop, event)
    except (
        ValueError,
        RecursionError,
        BadEvent,
    ) as exc:  # JSONDecodeError is a ValueError; deep nesting recurses
        shop.counters.count("keyvend_webhook_rejected_total", reason="content")
        return _reply(400, f"unreadable event: {exc}"[:200])
    except PaymentUnavailable:
        # Applying this event needs an answer from Stripe that did not come: Stripe retries.
        return _reply(503, "Stripe is unreachable; retry later")
    except CheckoutNotRecorded:
        return _reply(503, "the order's checkout is not recorded yet; retry later")
    if result is not None and result.outcome in (Outcome.FOREIGN, Outcome.UNKNOWN_ORDER):
        _ignored(shop, event, result)
    outcome = result.outcome.value if result else "ignored"
    shop.counters.count(
        "keyvend_webhook_events_total", type=str(event.get("type"))[:64], outcome=outcome
    )
    return web.json_response({"received": True, "outcome": outcome})


async def _apply(shop: Shop, event: dict[str, Any]) -> Result | None:
    kind, event_id = event.get("type"), event.get("id")
    data = event.get("data")
    if not isinstance(kind, str) or not isinstance(event_id, str) or not isinstance(data, dict):
        raise BadEvent("missing id, type or data")
    if len(event_id) > MAX_ID or len(kind) > 64:
        raise BadEvent("id or type too long")
    obj = data.get("object")
    if not isinstance(obj, dict):
        raise BadEvent("missing data.object")
    ledger = Event(PROVIDER, event_id, kind)
    match kind:
        case "checkout.session.completed" | "checkout.session.async_payment_succeeded":
            payment = payment_from_session(obj)
            if payment is None:
                return None
            if payment.state is CheckoutState.AWAITING:
                return await shop.awaiting_payment(
                    payment.order_id, checkout_ref=payment.checkout_ref, event=ledger
                )
            if payment.state is not CheckoutState.PAID:
                raise BadEvent(f"{kind} for a session that is {obj.get('status')}")
            # A subscription's checkout is its first period: paying it starts the subscription.
            apply = (
                partial(shop.apply_payment, PROVIDER) if payment.subscription_ref else shop.fulfil
            )
            for pause in _RECORDING_WAITS:
                try:
                    return await apply(payment, ledger)
                except CheckoutNotRecorded:
                    await asyncio.sleep(pause)
            return await apply(payment, ledger)
        case "invoice.paid" | "invoice.payment_failed":
            payment = payment_from_invoice(obj)
            if payment is None:
                return None
            if kind == "invoice.paid":
                if payment.state is not CheckoutState.PAID:
                    raise BadEvent(f"invoice.paid for an invoice that is {obj.get('status')}")
                return await shop.renew(PROVIDER, payment, ledger)
            return await shop.subscription_past_due(
                payment.order_id,
                payment.subscription_ref,
                payment_ref=payment.payment_ref,
                event=ledger,
            )
        case "customer.subscription.deleted":
            if obj.get("object") != "subscription":
                raise BadEvent("data.object is not a subscription")
            order_id = _order_id(_dict(obj.get("metadata")).get("order_id"))
            subscription = _str(obj.get("id"))
            if order_id is None or subscription is None:
                return None
            return await shop.subscription_ended(order_id, subscription, event=ledger)
        case "checkout.session.expired" | "checkout.session.async_payment_failed":
            payment = payment_from_session(obj)
            if payment is None:
                return None
            state = CheckoutState.EXPIRED if kind.endswith("expired") else CheckoutState.FAILED
            return await shop.close_unpaid(
                payment.order_id, state, checkout_ref=payment.checkout_ref, event=ledger
            )
        case "charge.refunded":
            amount, refunded = obj.get("amount"), obj.get("amount_refunded")
            full = obj.get("refunded") is True or (
                isinstance(amount, int) and isinstance(refunded, int) and refunded >= amount
            )
            metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
            return await shop.refunded(
                _order_id(metadata.get("order_id")),
                payment_ref=_ref(obj.get("payment_intent")),
                full=full,
                event=ledger,
            )
        case "charge.dispute.created":
            return await shop.disputed(
                payment_ref=_ref(obj.get("payment_intent")),
                event=ledger,
                reason=str(obj.get("reason")),
            )
    return None


def _ignored(shop: Shop, event: dict[str, Any], result: Result) -> None:
    """Log and count an event that names no order of ours, or not our order's own payment."""
    obj = event["data"]["object"]
    shop.counters.count("keyvend_webhook_ignored_total", reason=result.outcome.value)
    log.warning(
        "ignored Stripe event %s (%s): %s for order %s (object %s, payment %s)",
        str(event.get("id"))[:MAX_ID],
        str(event.get("type"))[:64],
        "not this shop's checkout or payment"
        if result.outcome is Outcome.FOREIGN
        else "no such order",
        result.order_id,
        str(obj.get("id"))[:MAX_ID],
        str(_ref_or_none(obj.get("payment_intent")))[:MAX_ID],
    )


def _ref_or_none(value: object) -> object:
    return value.get("id") if isinstance(value, dict) else value


def _signed_at(header: str) -> int:
    """The `t=` timestamp of a Stripe-Signature header, read as the SDK reads it (the first
    `t`), once the SDK has verified the signature over it."""
    items = [item.split("=", 2) for item in header.split(",")]
    return int(next(item[1] for item in items if item[0] == "t"))


def _reply(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)
