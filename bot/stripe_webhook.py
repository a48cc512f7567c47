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
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
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
    amount = session.get("amount_total")
    if amount is not None and (
        not isinstance(amount, int) or isinstance(amount, bool) or not 0 <= amount <= MAX_AMOUNT
    ):
        raise BadEvent("amount_total is not an amount Stripe can charge")
    currency = session.get("currency")
    if currency is not None and not (
        isinstance(currency, str) and len(currency) == 3 and currency.isalpha()
    ):
        raise BadEvent("currency is not a three-letter code")
    return Payment(
        order_id=order_id,
        state=state,
        checkout_ref=_str(session.get("id")),
        payment_ref=_ref(session.get("payment_intent")),
        amount_minor=amount,
        currency=currency.lower() if currency else None,
    )


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
            for pause in _RECORDING_WAITS:
                try:
                    return await shop.fulfil(payment, ledger)
                except CheckoutNotRecorded:
                    await asyncio.sleep(pause)
            return await shop.fulfil(payment, ledger)
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
