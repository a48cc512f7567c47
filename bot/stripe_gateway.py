"""Stripe Checkout as a payment gateway, through the official SDK.

Every call that creates something carries an idempotency key derived from the order id
(`checkout-order-<id>`, `refund-order-<id>`), and the SDK retries network errors and 5xx
with that same key, so a retry can never open a second checkout or refund twice. Anything
Stripe cannot answer becomes `PaymentUnavailable`; the caller decides what the buyer hears.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import stripe

from bot.stripe_webhook import INVOICE_PREFIX, payment_from_session
from store.errors import PaymentUnavailable
from store.models import Period
from store.payments import CheckoutRequest, CheckoutStarted, Payment

log = logging.getLogger(__name__)

_MIN_EXPIRY = 30 * 60 + 30  # seconds


def _line_item(request: CheckoutRequest) -> dict[str, Any]:
    """The order as one line: N at the unit price, or, with a coupon's discount on the
    whole order (which need not divide by N), one line "N × product" at the total."""
    if request.discount_minor:
        quantity, unit = 1, request.amount_minor
        name = f"{request.quantity} × {request.product_name}"
    else:
        quantity, unit, name = request.quantity, request.unit_amount_minor, request.product_name
    return {
        "quantity": quantity,
        "price_data": {
            "currency": request.currency,
            "unit_amount": unit,
            "product_data": {"name": name[:250]},
        },
    }


class StripeGateway:
    name = "stripe"
    currency = None  # the product's own price
    periods = frozenset(Period)  # Stripe bills every week, month or year
    reports_end = True  # customer.subscription.deleted, after its own retries

    def __init__(
        self,
        secret_key: str,
        *,
        success_url: Callable[[int], str],
        api_base: str | None = None,
        timeout: float = 15.0,
        max_network_retries: int = 2,
    ) -> None:
        self._success_url = success_url
        self._http = stripe.HTTPXClient(timeout=timeout)
        self._client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base} if api_base else None,
            http_client=self._http,
            max_network_retries=max_network_retries,
        )

    async def close(self) -> None:
        """Close the HTTP connections to Stripe."""
        await self._http.close_async()

    async def start_checkout(self, request: CheckoutRequest) -> CheckoutStarted:
        order = str(request.order_id)
        line = _line_item(request)
        params: dict[str, Any] = {
            "mode": "payment",
            "line_items": [line],
            "client_reference_id": order,
            "metadata": {"order_id": order},
            "payment_intent_data": {"metadata": {"order_id": order}},
            # Stripe counts its 30-minute minimum from when it creates the session, a moment
            # after our clock was read: never ask for less than that plus a margin.
            "expires_at": max(int(request.expires_at.timestamp()), int(time.time()) + _MIN_EXPIRY),
            "success_url": self._success_url(request.order_id),
            "cancel_url": self._success_url(request.order_id),
        }
        if request.every is not None:
            # Each invoice of the subscription names the order it began with, through the
            # subscription's metadata that Stripe copies onto every invoice.
            line["price_data"]["recurring"] = {"interval": request.every}
            params["mode"] = "subscription"
            del params["payment_intent_data"]
            params["subscription_data"] = {"metadata": {"order_id": order}}
        session = await self._call(
            "open a checkout",
            self._client.v1.checkout.sessions.create_async,
            params=params,
            options={"idempotency_key": f"checkout-order-{order}"},
        )
        return CheckoutStarted(
            ref=session["id"],
            url=session["url"],
            expires_at=datetime.fromtimestamp(session["expires_at"], UTC),
        )

    async def checkout_status(self, order_id: int, checkout_ref: str | None) -> Payment:
        session = await self._call(
            "check a checkout", self._client.v1.checkout.sessions.retrieve_async, checkout_ref
        )
        return self._payment(order_id, session)

    async def cancel_checkout(self, order_id: int, checkout_ref: str | None) -> Payment:
        try:
            session = await self._client.v1.checkout.sessions.expire_async(checkout_ref)
        except stripe.InvalidRequestError:
            # Not open any more (paid or expired meanwhile): report what it became.
            return await self.checkout_status(order_id, checkout_ref)
        except stripe.StripeError as exc:
            raise self._unavailable("close a checkout", exc) from None
        return self._payment(order_id, session)

    async def cancel_subscription(self, payment_ref: str) -> None:
        # Stripe keeps billing nothing more and ends it at the period's end with
        # `customer.subscription.deleted`; setting the flag again changes nothing.
        try:
            await self._client.v1.subscriptions.update_async(
                payment_ref, params={"cancel_at_period_end": True}
            )
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                raise PaymentUnavailable("Stripe has no such subscription") from None
            # Ended already: nothing is left to stop.
            log.info("Stripe subscription not cancelled: %s", exc.code or exc.http_status)
        except stripe.StripeError as exc:
            raise self._unavailable("cancel a subscription", exc) from None

    async def refund(self, order_id: int, payment_ref: str, amount_minor: int) -> str:
        if payment_ref.startswith(INVOICE_PREFIX):
            # A subscription's period is paid by an invoice: refund the payment behind it.
            payments = await self._call(
                "look up an invoice's payment",
                self._client.v1.invoice_payments.list_async,
                params={"invoice": payment_ref},
            )
            intents = [
                p["payment"]["payment_intent"]
                for p in payments["data"]
                if p["status"] == "paid" and p["payment"]["type"] == "payment_intent"
            ]
            if not intents:
                raise PaymentUnavailable(f"invoice {payment_ref} has no payment to refund")
            payment_ref = intents[0]
        try:
            refund = await self._client.v1.refunds.create_async(
                params={
                    "payment_intent": payment_ref,
                    "amount": amount_minor,
                    "metadata": {"order_id": str(order_id)},
                },
                options={"idempotency_key": f"refund-order-{order_id}"},
            )
        except stripe.InvalidRequestError as exc:
            if exc.code == "charge_already_refunded":
                return "already-refunded"
            raise self._unavailable("refund", exc) from None
        except stripe.StripeError as exc:
            raise self._unavailable("refund", exc) from None
        return refund["id"]

    async def order_of_payment(self, payment_ref: str) -> int | None:
        try:
            intent = await self._client.v1.payment_intents.retrieve_async(payment_ref)
        except stripe.InvalidRequestError:
            return None  # no such payment on this account
        except stripe.StripeError as exc:
            raise self._unavailable("look up a payment", exc) from None
        order = (intent.to_dict().get("metadata") or {}).get("order_id")
        return int(order) if isinstance(order, str) and order.isdigit() else None

    async def missed_payments(self) -> list[tuple[str, Payment]]:
        # Reconciliation asks about each overdue Checkout Session (`checkout_status`).
        return []

    def _payment(self, order_id: int, session: Any) -> Payment:
        payment = payment_from_session(session.to_dict())
        if payment is None or payment.order_id != order_id:
            raise PaymentUnavailable(f"Stripe session {session['id']} is not order {order_id}'s")
        return payment

    async def _call(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except stripe.StripeError as exc:
            raise self._unavailable(what, exc) from None

    @staticmethod
    def _unavailable(what: str, exc: stripe.StripeError) -> PaymentUnavailable:
        # The SDK's message never holds the API key; keep only its class and code.
        log.warning(
            "Stripe could not %s: %s (%s)", what, type(exc).__name__, exc.code or exc.http_status
        )
        if isinstance(exc, stripe.AuthenticationError):
            log.error(
                "Stripe rejected STRIPE_SECRET_KEY: check it in the dashboard (Developers → API keys)"
            )
        return PaymentUnavailable(f"Stripe could not {what}")
