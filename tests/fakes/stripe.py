"""A fake Stripe API server for end-to-end tests, stress tests and benchmarks.

This module owns ``FakeStripe``: a real HTTP server (aiohttp.web) that the real
stripe-python SDK talks to over HTTP, covering the part of the API keyvend uses
(Checkout Sessions in payment and subscription mode, PaymentIntents, Charges, Refunds,
Subscriptions, Invoices), plus helpers that play the customer's and Stripe's part (paying,
settling, expiring, renewing or failing to renew a subscription, cancelling it) and build
signed webhook events for the app's ``/stripe/webhook`` endpoint.

Objects and events are copied from the project's own templates in
``tests/fixtures/stripe/*.json`` (see ``template``), written after Stripe's documented
object shapes: every top-level field Stripe sends, with the values of a test-mode card
payment; nested objects keep the fields anything here reads. The fake sets the fields a
scenario needs on a copy. ``tests/fakes/test_stripe_templates.py`` compares the templates
with Stripe's published examples where those sit beside the repository.

Behaviour modelled on Stripe because client bugs hide in it:

* requests are form-encoded with bracket keys and decoded back into nested params;
* Bearer API-key authentication (401 otherwise);
* parameter validation with ``invalid_request_error`` naming the parameter,
  including "Received unknown parameter" for params the SDK's own schema lacks;
* idempotency keys, scoped per API key: same key and params replay the first
  response byte for byte (``Idempotent-Replayed: true``), same key with other params
  is an ``idempotency_error``; requests rejected before executing store nothing;
* fault injection (``fail_next``, ``fail_rate``, ``delay``, ``down``) that fails
  *before* any object is created, so SDK retries with the same key execute normally.

The fake does not send webhooks by itself: tests decide when and in which order
events arrive, using ``signed()`` to POST them to the app.

All state lives on the instance and is touched only from the event loop that runs
the server, so the helpers must be called from that loop's thread.
"""

from __future__ import annotations

import asyncio
import html
import json
import random
import re
import string
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Self
from urllib.parse import parse_qsl

import stripe
from aiohttp import web

__all__ = ["TEMPLATES", "FakeStripe", "Request", "decode_form", "template"]

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "stripe"
_TEMPLATE_NAMES = (
    "checkout.session",
    "event",
    "charge",
    "refund",
    "dispute",
    "payment_intent",
    "subscription",
    "invoice",
)
_INTERVALS = {"day": 86400, "week": 7 * 86400, "month": 31 * 86400, "year": 365 * 86400}
_ALNUM = string.ascii_letters + string.digits
_CURRENCY_RE = re.compile(r"^[a-zA-Z]{3}$")
_API_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[a-z_]+)?$")
_URL_RE = re.compile(r"^https?://[^\s/]+", re.IGNORECASE)
# Stripe's own limits on checkout.session.expires_at, relative to creation.
_MIN_EXPIRY = 30 * 60
_MAX_EXPIRY = 24 * 60 * 60
_REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})
# Keys that must never be turned into lists even if every sub-key is numeric,
# because Stripe treats them as free-form hashes.
_HASH_KEYS = frozenset({"metadata"})


def template(name: str) -> dict[str, Any]:
    """A fresh copy of the template for Stripe object ``name`` (``checkout.session``...)."""
    with open(TEMPLATES / f"{name}.json", encoding="utf-8") as fh:
        loaded: dict[str, Any] = json.load(fh)
    return loaded


class Request(NamedTuple):
    """One API call as the fake saw it. ``status`` is 0 when ``down`` dropped it unanswered."""

    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None
    status: int


class _ApiError(Exception):
    """A Stripe-shaped error answer.

    ``stored`` marks errors raised while the endpoint was executing (e.g. refunding an
    already refunded charge): Stripe saves those under the idempotency key, whereas
    parameter-validation failures are not saved and a retry executes afresh.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        stored: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.stored = stored

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            err["code"] = self.code
            err["doc_url"] = "https://stripe.com/docs/error-codes/" + self.code.replace("_", "-")
        if self.param is not None:
            err["param"] = self.param
        return {"error": err}


@dataclass
class _Stored:
    """What the idempotency layer remembers about the first request under a key."""

    method: str
    path: str
    params: dict[str, Any]
    status: int
    body: bytes
    request_id: str


@dataclass
class _SessionState:
    """Session facts Stripe keeps but does not show on the checkout.session object."""

    line_items: list[dict[str, Any]]
    pi_metadata: dict[str, str]
    async_method: bool = False
    settled: str | None = None  # None | "succeeded" | "failed", for async methods
    charge_id: str | None = None
    # Subscription mode: the recurring interval and the metadata the subscription gets.
    interval: str | None = None
    subscription_metadata: dict[str, str] | None = None


_Handler = Callable[[re.Match[str], dict[str, Any]], tuple[int, dict[str, Any]]]


def decode_form(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Turn Stripe's bracket-keyed form pairs back into nested dicts and lists.

    ``line_items[0][price_data][unit_amount]=999`` becomes
    ``{"line_items": [{"price_data": {"unit_amount": "999"}}]}``. Values stay strings,
    as on the wire; ``key[]`` appends, like Stripe accepts.
    """
    root: dict[str, Any] = {}
    for raw_key, value in pairs:
        head, bracket, rest = raw_key.partition("[")
        if bracket and rest.endswith("]"):
            parts = [head, *rest[:-1].split("][")]
        else:
            parts = [raw_key]
        node = root
        for depth, part in enumerate(parts):
            if part == "":
                part = str(len(node))
            if depth == len(parts) - 1:
                if isinstance(node.get(part), dict):
                    raise _ApiError(
                        400,
                        f"Invalid hash: {raw_key} was sent both as a value and as a hash",
                        param=raw_key,
                    )
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    # e.g. ``metadata=`` (unset) followed by ``metadata[a]=b``: the hash wins.
                    child = node[part] = {}
                node = child
    decoded: dict[str, Any] = _listify(root, None)
    return decoded


def _listify(node: Any, key: str | None) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {k: _listify(v, k) for k, v in node.items()}
    if key not in _HASH_KEYS and converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def _known_keys(typed_dict: Any, minus: frozenset[str] = frozenset()) -> frozenset[str] | None:
    keys = getattr(typed_dict, "__required_keys__", None)
    if keys is None:
        return None
    return frozenset(keys | typed_dict.__optional_keys__) - minus


def _sdk_param_schema() -> dict[str, frozenset[str]]:
    """Allowed parameter names per nesting level, taken from the SDK's generated TypedDicts.

    The SDK is generated from Stripe's OpenAPI spec, so this is the same list Stripe
    checks against. If a future SDK moves these classes the check is simply skipped.
    """
    try:
        from stripe._request_options import RequestOptions
        from stripe.params import RefundCreateParams
        from stripe.params.checkout import _session_create_params as scp
    except ImportError:
        return {}
    options = _known_keys(RequestOptions) or frozenset()
    pairs = {
        "session": _known_keys(getattr(scp, "SessionCreateParams", None), options),
        "session.line_item": _known_keys(getattr(scp, "SessionCreateParamsLineItem", None)),
        "session.price_data": _known_keys(
            getattr(scp, "SessionCreateParamsLineItemPriceData", None)
        ),
        "session.product_data": _known_keys(
            getattr(scp, "SessionCreateParamsLineItemPriceDataProductData", None)
        ),
        "session.payment_intent_data": _known_keys(
            getattr(scp, "SessionCreateParamsPaymentIntentData", None)
        ),
        "session.subscription_data": _known_keys(
            getattr(scp, "SessionCreateParamsSubscriptionData", None)
        ),
        "session.recurring": _known_keys(
            getattr(scp, "SessionCreateParamsLineItemPriceDataRecurring", None)
        ),
        "refund": _known_keys(RefundCreateParams, options),
    }
    return {k: v for k, v in pairs.items() if v}


class FakeStripe:
    """Fake Stripe API server; see the module docstring.

    Use as ``async with FakeStripe() as fake:`` and point the SDK at ``fake.url``.

    Fault injection applies to ``/v1`` calls only (not the ``/pay`` page) and can be
    changed at any time: ``fail_next(n, status)``; ``fail_rate`` (probability of a 500
    per call); ``delay`` (seconds slept before answering, after the work is done, so a
    client timeout leaves the object created, as with real Stripe); ``down`` (the
    connection is closed unanswered, recorded in ``requests`` with status 0).
    ``api_key`` may be reassigned to model a rotated key.
    """

    def __init__(
        self,
        *,
        api_key: str = "sk_test_keyvendfake0000000000000000",
        webhook_secret: str = "whsec_keyvendfake0000000000000000",
        seed: int = 0,
    ) -> None:
        self.api_key = api_key
        self.webhook_secret = webhook_secret
        self.url = ""

        self.sessions: dict[str, dict[str, Any]] = {}
        self.payment_intents: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.invoices: dict[str, dict[str, Any]] = {}
        self.requests: list[Request] = []

        # Fault injection; plain attributes so tests can flip them at any time.
        self.fail_rate = 0.0
        self.delay = 0.0
        self.down = False
        self._fail_count = 0
        self._fail_status = 500

        # Separate streams so turning faults on does not change the ids a seed yields.
        self._ids = random.Random(seed)
        self._faults = random.Random(seed + 1)

        # Kept as compact JSON text: json.loads of it is a fresh deep copy, ~3x cheaper
        # than copy.deepcopy, which matters at benchmark rates.
        self._templates = {
            name: json.dumps(template(name), separators=(",", ":")) for name in _TEMPLATE_NAMES
        }
        # A delivered event carries the account's API version: here, the one the SDK pins.
        self.api_version: str = stripe.api_version

        self._state: dict[str, _SessionState] = {}
        self._invoice_payments: dict[str, str] = {}  # invoice id -> the PaymentIntent paying it
        self._by_order: dict[str, str] = {}
        self._idempotency: dict[tuple[str, str], _Stored] = {}
        self._param_schema = _sdk_param_schema()
        self._routes: list[tuple[str, re.Pattern[str], _Handler]] = [
            ("POST", re.compile(r"^/v1/checkout/sessions$"), self._create_session),
            ("GET", re.compile(r"^/v1/checkout/sessions/(?P<id>[^/]+)$"), self._get_session),
            (
                "POST",
                re.compile(r"^/v1/checkout/sessions/(?P<id>[^/]+)/expire$"),
                self._expire_session,
            ),
            (
                "GET",
                re.compile(r"^/v1/checkout/sessions/(?P<id>[^/]+)/line_items$"),
                self._get_line_items,
            ),
            ("POST", re.compile(r"^/v1/refunds$"), self._create_refund),
            ("GET", re.compile(r"^/v1/refunds/(?P<id>[^/]+)$"), self._get_refund),
            ("GET", re.compile(r"^/v1/payment_intents/(?P<id>[^/]+)$"), self._get_payment_intent),
            ("GET", re.compile(r"^/v1/charges/(?P<id>[^/]+)$"), self._get_charge),
            ("GET", re.compile(r"^/v1/subscriptions/(?P<id>[^/]+)$"), self._get_subscription),
            ("POST", re.compile(r"^/v1/subscriptions/(?P<id>[^/]+)$"), self._update_subscription),
            ("GET", re.compile(r"^/v1/invoice_payments$"), self._list_invoice_payments),
        ]
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self._runner is not None:
            raise RuntimeError("FakeStripe already started")
        app = web.Application()
        app.router.add_route("*", "/v1/{tail:.*}", self._api)
        app.router.add_get("/pay/{id}", self._pay_page)
        # A short shutdown_timeout so stop() does not hang on handlers parked in `delay`.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        self.url = f"http://{bound_host}:{bound_port}"
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ fault injection

    def fail_next(self, n: int, status: int = 500) -> None:
        """Answer the next ``n`` API calls with ``status`` before doing anything.

        Replaces any pending failures (``fail_next(0)`` cancels them).
        """
        if n < 0 or not 400 <= status <= 599:
            raise ValueError("fail_next needs n >= 0 and a 4xx/5xx status")
        self._fail_count = n
        self._fail_status = status

    @property
    def failures_pending(self) -> int:
        """How many of the calls requested by ``fail_next`` have not happened yet."""
        return self._fail_count

    # ------------------------------------------------------------------ lookups

    def session_for_order(self, order_id: int | str) -> dict[str, Any]:
        """The most recently created session whose client_reference_id is ``order_id``."""
        return self.sessions[self._by_order[str(order_id)]]

    # ------------------------------------------------------------------ customer / Stripe actions

    def pay(
        self,
        session_id: str,
        *,
        amount_total: int | None = None,
        currency: str | None = None,
        async_method: bool = False,
    ) -> dict[str, Any]:
        """Complete the session as a paying customer would.

        Creates the PaymentIntent and Charge. ``amount_total``/``currency`` replace what
        Stripe reports (session, PaymentIntent and Charge) to simulate a mismatch;
        ``async_method`` models a bank debit: the session completes unpaid until
        ``settle_async``.
        """
        session = self._session(session_id)
        if session["status"] != "open":
            raise ValueError(f"cannot pay session {session_id}: status is {session['status']!r}")
        state = self._state[session_id]
        now = int(time.time())
        amount = session["amount_total"] if amount_total is None else int(amount_total)
        cur = (currency or session["currency"]).lower()
        pi_id = self._new_id("pi_3", 24)
        charge_id = self._new_id("ch_3", 24)
        pm_id = self._new_id("pm_1", 24)

        # The templates are a succeeded card payment; an asynchronous method is still processing.
        pi = self._fresh("payment_intent")
        pi.update(
            id=pi_id,
            amount=amount,
            amount_received=0 if async_method else amount,
            currency=cur,
            created=now,
            client_secret=f"{pi_id}_secret_{self._new_id('', 25)}",
            latest_charge=charge_id,
            metadata=dict(state.pi_metadata),
            payment_method=pm_id,
            payment_method_types=["us_bank_account" if async_method else "card"],
            status="processing" if async_method else "succeeded",
        )
        charge = self._fresh("charge")
        charge.update(
            id=charge_id,
            amount=amount,
            amount_captured=amount,
            balance_transaction=self._new_id("txn_3", 24),
            created=now,
            currency=cur,
            metadata=dict(state.pi_metadata),
            payment_intent=pi_id,
            payment_method=pm_id,
            paid=not async_method,
            status="pending" if async_method else "succeeded",
            refunds={
                "object": "list",
                "data": [],
                "has_more": False,
                "url": f"/v1/charges/{charge_id}/refunds",
            },
        )
        if async_method:
            charge["payment_method_details"] = {
                "type": "us_bank_account",
                "us_bank_account": {
                    "account_holder_type": "individual",
                    "account_type": "checking",
                    "bank_name": "STRIPE TEST BANK",
                    "last4": "6789",
                    "routing_number": "110000000",
                },
            }
        self.payment_intents[pi_id] = pi
        self.charges[charge_id] = charge
        state.charge_id = charge_id
        state.async_method = async_method

        template_session = json.loads(self._templates["checkout.session"])
        if state.interval is not None:
            # Subscription mode: the payment belongs to the subscription's first invoice.
            subscription = self._start_subscription(session, amount, cur)
            invoice = self._new_invoice(subscription, "subscription_create", pi_id)
            session.update(
                customer=subscription["customer"],
                subscription=subscription["id"],
                invoice=invoice["id"],
            )
            pi_id = None
        session.update(
            status="complete",
            payment_status="unpaid" if async_method else "paid",
            payment_intent=pi_id,
            amount_total=amount,
            amount_subtotal=amount,
            currency=cur,
            customer_details=template_session["customer_details"],
            url=None,
        )
        return session

    # ------------------------------------------------------------------ subscriptions

    def subscription_for_order(self, order_id: int | str) -> dict[str, Any]:
        """The subscription the order's (subscription-mode) session started."""
        subscription_id = self.session_for_order(order_id)["subscription"]
        if subscription_id is None:
            raise ValueError(f"order {order_id}'s session started no subscription")
        return self.subscriptions[subscription_id]

    def renew(self, subscription_id: str, *, paid: bool = True) -> dict[str, Any]:
        """Stripe bills the next period: a paid invoice (the period advances), or one whose
        payment failed (the invoice stays open and the subscription goes past due)."""
        subscription = self.subscriptions[subscription_id]
        if subscription["status"] == "canceled":
            raise ValueError(f"subscription {subscription_id} is cancelled")
        item = subscription["items"]["data"][0]
        item["current_period_start"] = item["current_period_end"]
        item["current_period_end"] += _INTERVALS[item["price"]["recurring"]["interval"]]
        if paid:
            return self._new_invoice(subscription, "subscription_cycle", self._charge(item))
        return self._new_invoice(subscription, "subscription_cycle", None)

    def payment_of_invoice(self, invoice_id: str) -> str | None:
        """The PaymentIntent that paid an invoice; None while it is unpaid."""
        return self._invoice_payments.get(invoice_id)

    def pay_invoice(self, invoice_id: str) -> dict[str, Any]:
        """The buyer fixes their card and Stripe's retry pays an open invoice."""
        invoice = self.invoices[invoice_id]
        if invoice["status"] != "open":
            raise ValueError(f"invoice {invoice_id} is {invoice['status']}, not open")
        subscription = self.subscriptions[self._subscription_of(invoice)]
        self._settle_invoice(invoice, self._charge(subscription["items"]["data"][0]))
        subscription["status"] = "active"
        return invoice

    def end_subscription(self, subscription_id: str) -> dict[str, Any]:
        """Stripe ends the subscription (at the period's end, after failed retries, or at
        once from the Dashboard)."""
        subscription = self.subscriptions[subscription_id]
        now = int(time.time())
        subscription.update(status="canceled", ended_at=now, canceled_at=now)
        return subscription

    def invoice_event(self, type: str, invoice_id: str) -> dict[str, Any]:
        """``invoice.paid`` or ``invoice.payment_failed`` for one of the fake's invoices."""
        invoice = self.invoices[invoice_id]
        wanted = {"invoice.paid": "paid", "invoice.payment_failed": "open"}[type]
        if invoice["status"] != wanted:
            raise ValueError(f"{type} needs an invoice that is {wanted}, not {invoice['status']}")
        return self.event(type, invoice)

    def subscription_deleted_event(self, subscription_id: str) -> dict[str, Any]:
        subscription = self.subscriptions[subscription_id]
        if subscription["status"] != "canceled":
            raise ValueError("customer.subscription.deleted needs end_subscription() first")
        return self.event("customer.subscription.deleted", subscription)

    def _start_subscription(
        self, session: dict[str, Any], amount: int, currency: str
    ) -> dict[str, Any]:
        state = self._state[session["id"]]
        now = int(time.time())
        subscription = self._fresh("subscription")
        subscription_id = self._new_id("sub_1", 24)
        price = state.line_items[0]["price"]
        item = subscription["items"]["data"][0]
        item.update(
            id=self._new_id("si_", 14),
            created=now,
            current_period_start=now,
            current_period_end=now + _INTERVALS[state.interval or "month"],
            subscription=subscription_id,
            quantity=state.line_items[0]["quantity"],
        )
        item["price"].update(
            id=price["id"],
            product=price["product"],
            currency=currency,
            unit_amount=amount,
            unit_amount_decimal=str(amount),
            recurring={**item["price"]["recurring"], "interval": state.interval},
        )
        item["plan"].update(
            id=price["id"],
            product=price["product"],
            currency=currency,
            amount=amount,
            amount_decimal=str(amount),
            interval=state.interval,
        )
        subscription.update(
            id=subscription_id,
            created=now,
            start_date=now,
            billing_cycle_anchor=now,
            currency=currency,
            customer=session.get("customer") or self._new_id("cus_", 14),
            metadata=dict(state.subscription_metadata or {}),
            status="active",
        )
        subscription["items"]["url"] = f"/v1/subscription_items?subscription={subscription_id}"
        self.subscriptions[subscription_id] = subscription
        return subscription

    def _charge(self, item: dict[str, Any]) -> str:
        """A succeeded card payment of one period's price; its PaymentIntent id."""
        now = int(time.time())
        amount, currency = (
            item["price"]["unit_amount"] * item["quantity"],
            item["price"]["currency"],
        )
        pi_id, charge_id = self._new_id("pi_3", 24), self._new_id("ch_3", 24)
        pi = self._fresh("payment_intent")
        pi.update(
            id=pi_id,
            amount=amount,
            amount_received=amount,
            currency=currency,
            created=now,
            client_secret=f"{pi_id}_secret_{self._new_id('', 25)}",
            latest_charge=charge_id,
            metadata={},
            status="succeeded",
        )
        charge = self._fresh("charge")
        charge.update(
            id=charge_id,
            amount=amount,
            amount_captured=amount,
            created=now,
            currency=currency,
            metadata={},
            payment_intent=pi_id,
            refunds={
                "object": "list",
                "data": [],
                "has_more": False,
                "url": f"/v1/charges/{charge_id}/refunds",
            },
        )
        self.payment_intents[pi_id] = pi
        self.charges[charge_id] = charge
        return pi_id

    def _new_invoice(
        self, subscription: dict[str, Any], reason: str, payment_intent: str | None
    ) -> dict[str, Any]:
        """The subscription's invoice for its current period: paid by `payment_intent`, or
        open after a failed attempt (the subscription goes past due)."""
        now = int(time.time())
        item = subscription["items"]["data"][0]
        amount = item["price"]["unit_amount"] * item["quantity"]
        invoice = self._fresh("invoice")
        invoice_id = self._new_id("in_1", 24)
        invoice.update(
            id=invoice_id,
            billing_reason=reason,
            created=now,
            effective_at=now,
            period_start=now,
            period_end=now,
            currency=item["price"]["currency"],
            customer=subscription["customer"],
            amount_due=amount,
            amount_paid=0,
            amount_remaining=amount,
            subtotal=amount,
            subtotal_excluding_tax=amount,
            total=amount,
            total_excluding_tax=amount,
            attempt_count=1,
            status="open",
            number=f"KV-{len(self.invoices) + 1:04d}",
        )
        invoice["status_transitions"].update(finalized_at=now, paid_at=None)
        invoice["parent"]["subscription_details"].update(
            subscription=subscription["id"], metadata=dict(subscription["metadata"])
        )
        line = invoice["lines"]["data"][0]
        line.update(
            id=self._new_id("il_1", 24),
            invoice=invoice_id,
            amount=amount,
            subtotal=amount,
            currency=item["price"]["currency"],
            quantity=item["quantity"],
            period={"start": item["current_period_start"], "end": item["current_period_end"]},
        )
        line["parent"]["subscription_item_details"].update(
            subscription=subscription["id"], subscription_item=item["id"]
        )
        invoice["lines"]["url"] = f"/v1/invoices/{invoice_id}/lines"
        self.invoices[invoice_id] = invoice
        subscription["latest_invoice"] = invoice_id
        if payment_intent is None:
            invoice["next_payment_attempt"] = now + 3 * 86400
            subscription["status"] = "past_due"
        else:
            self._settle_invoice(invoice, payment_intent)
            subscription["status"] = "active"
        return invoice

    def _settle_invoice(self, invoice: dict[str, Any], payment_intent: str) -> None:
        now = int(time.time())
        invoice.update(
            status="paid",
            amount_paid=invoice["amount_due"],
            amount_remaining=0,
            next_payment_attempt=None,
        )
        invoice["status_transitions"]["paid_at"] = now
        self._invoice_payments[invoice["id"]] = payment_intent

    @staticmethod
    def _subscription_of(invoice: dict[str, Any]) -> str:
        subscription: str = invoice["parent"]["subscription_details"]["subscription"]
        return subscription

    def settle_async(self, session_id: str, *, succeeded: bool = True) -> dict[str, Any]:
        """Finish a ``pay(async_method=True)`` payment: funds arrive, or the debit fails."""
        session = self._session(session_id)
        state = self._state[session_id]
        if not state.async_method or state.charge_id is None:
            raise ValueError(f"session {session_id} has no asynchronous payment to settle")
        if state.settled is not None:
            raise ValueError(f"session {session_id} was already settled ({state.settled})")
        charge = self.charges[state.charge_id]
        pi = self.payment_intents[charge["payment_intent"]]
        if succeeded:
            state.settled = "succeeded"
            session["payment_status"] = "paid"
            pi.update(status="succeeded", amount_received=pi["amount"], processing=None)
            charge.update(status="succeeded", paid=True)
        else:
            # Stripe leaves a failed async session "unpaid"; the PI asks for a new method.
            state.settled = "failed"
            pi.update(
                status="requires_payment_method",
                processing=None,
                last_payment_error={
                    "type": "card_error",
                    "code": "payment_method_provider_decline",
                    "decline_code": "debit_not_authorized",
                    "message": "The customer's bank declined the debit.",
                },
            )
            charge.update(
                status="failed",
                paid=False,
                captured=False,
                amount_captured=0,
                failure_code="debit_not_authorized",
                failure_message="The customer's bank declined the debit.",
            )
        return session

    def expire(self, session_id: str) -> dict[str, Any]:
        """Expire an open session, as Stripe does at ``expires_at``."""
        session = self._session(session_id)
        if session["status"] != "open":
            raise ValueError(f"cannot expire session {session_id}: status is {session['status']!r}")
        session.update(status="expired", url=None)
        return session

    # ------------------------------------------------------------------ events

    def event(self, type: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Wrap a copy of ``obj`` in an event envelope of the given type."""
        evt = self._fresh("event")
        evt.update(
            id=self._new_id("evt_1", 24),
            type=type,
            created=int(time.time()),
            api_version=self.api_version,
            data={"object": json.loads(json.dumps(obj))},
        )
        return evt

    def completed_event(self, session_id: str) -> dict[str, Any]:
        session = self._session(session_id)
        self._require(
            session["status"] == "complete",
            session_id,
            "checkout.session.completed needs pay() first",
        )
        return self.event("checkout.session.completed", session)

    def async_succeeded_event(self, session_id: str) -> dict[str, Any]:
        session = self._session(session_id)
        self._require(
            self._state[session_id].settled == "succeeded",
            session_id,
            "async_payment_succeeded needs pay(async_method=True) and settle_async()",
        )
        return self.event("checkout.session.async_payment_succeeded", session)

    def async_failed_event(self, session_id: str) -> dict[str, Any]:
        session = self._session(session_id)
        self._require(
            self._state[session_id].settled == "failed",
            session_id,
            "async_payment_failed needs pay(async_method=True) and settle_async(succeeded=False)",
        )
        return self.event("checkout.session.async_payment_failed", session)

    def expired_event(self, session_id: str) -> dict[str, Any]:
        session = self._session(session_id)
        self._require(
            session["status"] == "expired",
            session_id,
            "checkout.session.expired needs expire() first",
        )
        return self.event("checkout.session.expired", session)

    def charge_refunded_event(
        self, session_id: str, *, amount_refunded: int | None = None
    ) -> dict[str, Any]:
        """``charge.refunded`` for the session's charge; a full refund unless ``amount_refunded``.

        Does not change the fake's own charge (a refund made via the API already did);
        this models e.g. a refund made from the Dashboard.
        """
        charge = dict(self._charge_of(session_id))
        refunded = charge["amount"] if amount_refunded is None else int(amount_refunded)
        charge.update(
            amount_refunded=refunded,
            refunded=refunded >= charge["amount"],
            metadata=dict(self._state[session_id].pi_metadata),
        )
        return self.event("charge.refunded", charge)

    def dispute_created_event(
        self, session_id: str, *, reason: str = "fraudulent"
    ) -> dict[str, Any]:
        charge = self._charge_of(session_id)
        now = int(time.time())
        dispute = self._fresh("dispute")
        dispute.update(
            id=self._new_id("dp_1", 24),
            charge=charge["id"],
            payment_intent=charge["payment_intent"],
            amount=charge["amount"],
            currency=charge["currency"],
            reason=reason,
            created=now,
        )
        dispute["evidence_details"]["due_by"] = now + 7 * 86400
        return self.event("charge.dispute.created", dispute)

    # ------------------------------------------------------------------ signing

    def sign(
        self, payload: bytes | str, *, timestamp: int | None = None, secret: str | None = None
    ) -> str:
        """The ``Stripe-Signature`` header value for ``payload`` (t=...,v1=...)."""
        text = payload.decode("utf-8") if isinstance(payload, (bytes, bytearray)) else payload
        header: str = stripe.WebhookSignature.generate_signature_header(
            text,
            secret if secret is not None else self.webhook_secret,
            timestamp=int(time.time()) if timestamp is None else timestamp,
        )
        return header

    def signed(self, event: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        """``(body, headers)`` ready to POST to the app's webhook endpoint."""
        # Stripe sends raw UTF-8, so keep non-ASCII unescaped: the app must verify bytes.
        body = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return body, {"Stripe-Signature": self.sign(body), "Content-Type": "application/json"}

    # ------------------------------------------------------------------ HTTP plumbing

    async def _api(self, request: web.Request) -> web.StreamResponse:
        method = request.method
        path = request.path
        idem_key = request.headers.get("Idempotency-Key")
        try:
            if method == "POST":
                params = decode_form(parse_qsl(await request.text(), keep_blank_values=True))
            else:
                params = decode_form(parse_qsl(request.query_string, keep_blank_values=True))
            decode_error: _ApiError | None = None
        except _ApiError as exc:
            params, decode_error = {}, exc

        if self.down:
            self.requests.append(Request(method, path, params, idem_key, 0))
            # Closing without a status line is what a crashed or unreachable API looks
            # like to the client: httpx raises, the SDK sees a retryable connection error.
            if request.transport is not None:
                request.transport.close()
            raise web.HTTPServiceUnavailable()

        request_id = self._new_id("req_", 14)
        headers = {
            "Request-Id": request_id,
            "Stripe-Version": request.headers.get("Stripe-Version", self.api_version),
        }
        if idem_key is not None:
            headers["Idempotency-Key"] = idem_key
        try:
            status, body = self._answer(
                method, path, params, idem_key, request, request_id, headers, decode_error
            )
        except _ApiError as exc:
            status, body = exc.status, _dumps(exc.body())
        self.requests.append(Request(method, path, params, idem_key, status))
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        return web.Response(
            status=status, body=body, headers=headers, content_type="application/json"
        )

    def _answer(
        self,
        method: str,
        path: str,
        params: dict[str, Any],
        idem_key: str | None,
        request: web.Request,
        request_id: str,
        headers: dict[str, str],
        decode_error: _ApiError | None,
    ) -> tuple[int, bytes]:
        # Faults come first so nothing is created or stored: a retry runs afresh.
        if self._fail_count > 0:
            self._fail_count -= 1
            raise _fault(self._fail_status)
        if self.fail_rate > 0 and self._faults.random() < self.fail_rate:
            raise _fault(500)

        api_key = self._authenticate(request.headers.get("Authorization"))
        version = request.headers.get("Stripe-Version")
        if version is not None and not _API_VERSION_RE.match(version):
            raise _ApiError(
                400, f"Invalid Stripe API version: {version}", code="invalid_api_version"
            )
        if decode_error is not None:
            raise decode_error

        for route_method, pattern, handler in self._routes:
            match = pattern.match(path)
            if match is not None and route_method == method:
                break
        else:
            raise _ApiError(
                404,
                f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
                "or we can help at https://support.stripe.com/.",
            )

        # Stripe ignores idempotency keys on GET: reads are naturally repeatable.
        use_key = method == "POST" and idem_key is not None
        if use_key:
            assert idem_key is not None
            if len(idem_key) > 255:
                raise _ApiError(
                    400,
                    "Keys for idempotent requests must be no longer than 255 characters.",
                    param="Idempotency-Key",
                )
            stored = self._idempotency.get((api_key, idem_key))
            if stored is not None:
                if stored.path != path or stored.method != method:
                    raise _ApiError(
                        400,
                        "Keys for idempotent requests can only be used for the same endpoint "
                        f"they were first used for ('{path}' vs '{stored.path}'). Try using a "
                        f"key other than '{idem_key}' if you meant to execute a different "
                        "request.",
                        type="idempotency_error",
                    )
                if stored.params != params:
                    raise _ApiError(
                        400,
                        "Keys for idempotent requests can only be used with the same "
                        "parameters they were first used with. Try using a key other than "
                        f"'{idem_key}' if you meant to execute a different request.",
                        type="idempotency_error",
                    )
                headers["Idempotent-Replayed"] = "true"
                headers["Original-Request"] = stored.request_id
                return stored.status, stored.body

        try:
            status, obj = handler(match, params)
            body = _dumps(obj)
        except _ApiError as exc:
            if not (use_key and exc.stored):
                raise
            status, body = exc.status, _dumps(exc.body())
        if use_key:
            assert idem_key is not None
            self._idempotency[(api_key, idem_key)] = _Stored(
                method, path, params, status, body, request_id
            )
        return status, body

    def _authenticate(self, authorization: str | None) -> str:
        if not authorization:
            raise _ApiError(
                401,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY'). See "
                "https://stripe.com/docs/api#authentication for details.",
            )
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or key != self.api_key:
            masked = (key[:8] + "*" * max(len(key) - 12, 0) + key[-4:]) if len(key) > 12 else "****"
            raise _ApiError(401, f"Invalid API Key provided: {masked}")
        return key

    async def _pay_page(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["id"])
        if session is None:
            return web.Response(
                status=404,
                text="<!doctype html><title>Not found</title><p>Unknown session.</p>",
                content_type="text/html",
            )
        items = "".join(
            f"<li>{html.escape(str(li['description']))} &times; {li['quantity']}</li>"
            for li in self._state[session["id"]].line_items
        )
        sid = html.escape(session["id"])
        total = f"{session['amount_total']} {html.escape(str(session['currency']).upper())}"
        status = f"{html.escape(session['status'])} / {html.escape(session['payment_status'])}"
        page = (
            "<!doctype html><html><head><meta charset='utf-8'>"
            "<title>FakeStripe Checkout</title></head><body><h1>FakeStripe Checkout</h1>"
            f"<p id='session'>{sid}</p><ul>{items}</ul><p id='total'>{total}</p>"
            f"<p id='status'>{status}</p></body></html>"
        )
        return web.Response(text=page, content_type="text/html")

    # ------------------------------------------------------------------ endpoints

    def _create_session(
        self, _match: re.Match[str], params: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        self._reject_unknown(params, "session", "")
        mode = params.get("mode")
        if not mode:
            raise _ApiError(
                400, "Missing required param: mode.", param="mode", code="parameter_missing"
            )
        if mode not in ("payment", "setup", "subscription"):
            raise _ApiError(
                400,
                f"Invalid mode: must be one of payment, setup, or subscription (got {mode!r}).",
                param="mode",
                code="parameter_invalid_string",
            )
        if mode == "setup":
            raise _ApiError(400, "FakeStripe does not implement mode=setup.", param="mode")
        ui_mode = params.get("ui_mode", "hosted")
        success_url = params.get("success_url")
        if ui_mode == "hosted" and not success_url:
            raise _ApiError(
                400,
                "Missing required param: success_url.",
                param="success_url",
                code="parameter_missing",
            )
        for name in ("success_url", "cancel_url"):
            value = params.get(name)
            if value and (not isinstance(value, str) or not _URL_RE.match(value)):
                raise _ApiError(400, f"Not a valid URL: {name}.", param=name, code="url_invalid")

        raw_items = params.get("line_items")
        if not raw_items:
            raise _ApiError(
                400,
                "Missing required param: line_items.",
                param="line_items",
                code="parameter_missing",
            )
        if not isinstance(raw_items, list):
            raise _ApiError(400, "Invalid array: line_items.", param="line_items")
        line_items: list[dict[str, Any]] = []
        currency: str | None = None
        total = 0
        for i, item in enumerate(raw_items):
            prefix = f"line_items[{i}]"
            if not isinstance(item, dict):
                raise _ApiError(400, f"Invalid hash: {prefix}.", param=prefix)
            self._reject_unknown(item, "session.line_item", prefix)
            if "price" in item:
                raise _ApiError(
                    400,
                    f"No such price: '{item['price']}' ({prefix}[price]); FakeStripe only "
                    "supports price_data.",
                    param=f"{prefix}[price]",
                    code="resource_missing",
                )
            price_data = item.get("price_data")
            if not isinstance(price_data, dict):
                raise _ApiError(
                    400,
                    f"Missing required param: {prefix}[price_data].",
                    param=f"{prefix}[price_data]",
                    code="parameter_missing",
                )
            self._reject_unknown(price_data, "session.price_data", f"{prefix}[price_data]")
            item_currency = _currency(price_data.get("currency"), f"{prefix}[price_data][currency]")
            if currency is not None and item_currency != currency:
                raise _ApiError(
                    400,
                    f"All line_items must use the same currency ({prefix}[price_data][currency] "
                    f"is {item_currency}, expected {currency}).",
                    param=f"{prefix}[price_data][currency]",
                )
            currency = item_currency
            unit_amount = _integer(
                price_data.get("unit_amount"), f"{prefix}[price_data][unit_amount]", minimum=0
            )
            product_data = price_data.get("product_data")
            if "product" in price_data:
                raise _ApiError(
                    400,
                    f"No such product: '{price_data['product']}' ({prefix}[price_data][product]); "
                    "FakeStripe only supports product_data.",
                    param=f"{prefix}[price_data][product]",
                    code="resource_missing",
                )
            if not isinstance(product_data, dict) or not product_data.get("name"):
                raise _ApiError(
                    400,
                    f"Missing required param: {prefix}[price_data][product_data][name].",
                    param=f"{prefix}[price_data][product_data][name]",
                    code="parameter_missing",
                )
            self._reject_unknown(
                product_data, "session.product_data", f"{prefix}[price_data][product_data]"
            )
            recurring = price_data.get("recurring")
            if (mode == "subscription") != isinstance(recurring, dict):
                raise _ApiError(
                    400,
                    "In subscription mode every line item needs a recurring price, and only "
                    f"there ({prefix}[price_data][recurring]).",
                    param=f"{prefix}[price_data][recurring]",
                )
            if recurring is not None:
                self._reject_unknown(
                    recurring, "session.recurring", f"{prefix}[price_data][recurring]"
                )
                if recurring.get("interval") not in _INTERVALS:
                    raise _ApiError(
                        400,
                        "Invalid recurring interval: must be one of day, week, month or year.",
                        param=f"{prefix}[price_data][recurring][interval]",
                    )
            quantity = _integer(item.get("quantity"), f"{prefix}[quantity]", minimum=1)
            amount = unit_amount * quantity
            total += amount
            line_items.append(
                {
                    "id": self._new_id("li_1", 24),
                    "object": "item",
                    "amount_discount": 0,
                    "amount_subtotal": amount,
                    "amount_tax": 0,
                    "amount_total": amount,
                    "currency": item_currency,
                    "description": product_data["name"],
                    "quantity": quantity,
                    "price": {
                        "id": self._new_id("price_1", 24),
                        "object": "price",
                        "active": False,
                        "currency": item_currency,
                        "unit_amount": unit_amount,
                        "unit_amount_decimal": str(unit_amount),
                        "type": "recurring" if recurring else "one_time",
                        "recurring": (
                            {"interval": recurring["interval"], "interval_count": 1}
                            if recurring
                            else None
                        ),
                        "product": self._new_id("prod_", 14),
                        "livemode": False,
                        "metadata": {},
                    },
                }
            )

        now = int(time.time())
        if "expires_at" in params:
            expires_at = _integer(params["expires_at"], "expires_at")
            if expires_at < now + _MIN_EXPIRY:
                raise _ApiError(
                    400,
                    "The `expires_at` timestamp must be at least 30 minutes from Checkout "
                    "Session creation.",
                    param="expires_at",
                )
            if expires_at > now + _MAX_EXPIRY:
                raise _ApiError(
                    400,
                    "The `expires_at` timestamp must be less than 24 hours from Checkout "
                    "Session creation.",
                    param="expires_at",
                )
        else:
            expires_at = now + _MAX_EXPIRY
        client_reference_id = params.get("client_reference_id") or None
        if client_reference_id is not None and len(client_reference_id) > 200:
            raise _ApiError(
                400,
                "Invalid client_reference_id: must be at most 200 characters.",
                param="client_reference_id",
            )
        metadata = _metadata(params.get("metadata"), "metadata")
        pi_data = params.get("payment_intent_data") or {}
        if not isinstance(pi_data, dict):
            raise _ApiError(400, "Invalid hash: payment_intent_data.", param="payment_intent_data")
        if pi_data and mode != "payment":
            raise _ApiError(
                400,
                "You can not pass `payment_intent_data` in `subscription` mode.",
                param="payment_intent_data",
            )
        sub_data = params.get("subscription_data") or {}
        if not isinstance(sub_data, dict) or (sub_data and mode != "subscription"):
            raise _ApiError(
                400, "subscription_data is a hash for subscription mode.", param="subscription_data"
            )
        self._reject_unknown(sub_data, "session.subscription_data", "subscription_data")
        sub_metadata = _metadata(sub_data.get("metadata"), "subscription_data[metadata]")
        self._reject_unknown(pi_data, "session.payment_intent_data", "payment_intent_data")
        pi_metadata = _metadata(pi_data.get("metadata"), "payment_intent_data[metadata]")

        session_id = self._new_id("cs_test_a1", 58)
        # The template is an open, unpaid payment-mode session with no tax or shipping.
        session = self._fresh("checkout.session")
        session.update(
            id=session_id,
            created=now,
            expires_at=expires_at,
            amount_subtotal=total,
            amount_total=total,
            currency=currency,
            client_reference_id=client_reference_id,
            metadata=metadata,
            success_url=success_url,
            cancel_url=params.get("cancel_url"),
            customer=params.get("customer"),
            customer_email=params.get("customer_email"),
            customer_details=None,  # filled in by pay(), from the template
            customer_creation=params.get("customer_creation", "if_required"),
            locale=params.get("locale"),
            submit_type=params.get("submit_type"),
            ui_mode=ui_mode,
            mode=mode,
            url=f"{self.url}/pay/{session_id}",
        )
        self.sessions[session_id] = session
        self._state[session_id] = _SessionState(
            line_items=line_items,
            pi_metadata=pi_metadata,
            interval=(
                line_items[0]["price"]["recurring"]["interval"] if mode == "subscription" else None
            ),
            subscription_metadata=sub_metadata,
        )
        if client_reference_id is not None:
            self._by_order[client_reference_id] = session_id
        return 200, self._expand_session(session, params)

    def _get_session(
        self, match: re.Match[str], params: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        return 200, self._expand_session(self._api_session(match["id"]), params)

    def _expire_session(
        self, match: re.Match[str], params: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        session = self._api_session(match["id"])
        if session["status"] != "open":
            raise _ApiError(
                400,
                'Only Checkout Sessions with a status in ["open"] can be expired. This Checkout '
                f'Session ({session["id"]}) has a status of "{session["status"]}".',
                stored=True,
            )
        session.update(status="expired", url=None)
        return 200, self._expand_session(session, params)

    def _get_line_items(
        self, match: re.Match[str], _params: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        session = self._api_session(match["id"])
        return 200, self._line_items_list(session)

    def _create_refund(
        self, _match: re.Match[str], params: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        self._reject_unknown(params, "refund", "")
        charge_id, pi_id = params.get("charge"), params.get("payment_intent")
        if not charge_id and not pi_id:
            raise _ApiError(
                400,
                "One of the following params should be provided for this request: "
                "payment_intent or charge.",
                param="payment_intent",
                code="parameter_missing",
            )
        if pi_id:
            pi = self.payment_intents.get(pi_id)
            if pi is None:
                raise _ApiError(
                    400,
                    f"No such payment_intent: '{pi_id}'",
                    param="payment_intent",
                    code="resource_missing",
                )
            if charge_id and charge_id != pi["latest_charge"]:
                raise _ApiError(
                    400,
                    f"Charge {charge_id} does not belong to PaymentIntent {pi_id}.",
                    param="charge",
                )
            charge_id = pi["latest_charge"]
        charge = self.charges.get(charge_id) if charge_id else None
        if charge is None:
            raise _ApiError(
                400, f"No such charge: '{charge_id}'", param="charge", code="resource_missing"
            )
        amount = (
            None
            if params.get("amount") in (None, "")
            else _integer(params["amount"], "amount", minimum=1)
        )
        reason = params.get("reason") or None
        if reason is not None and reason not in _REFUND_REASONS:
            raise _ApiError(
                400,
                "Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer.",
                param="reason",
                code="parameter_invalid_string",
            )
        metadata = _metadata(params.get("metadata"), "metadata")

        # From here on the endpoint is "executing": Stripe stores these errors under the key.
        if charge["status"] != "succeeded":
            raise _ApiError(
                400,
                f"This charge ({charge['id']}) has no successful payment to refund "
                f"(status: {charge['status']}).",
                code="charge_not_refundable",
                stored=True,
            )
        remaining = charge["amount"] - charge["amount_refunded"]
        if remaining <= 0:
            raise _ApiError(
                400,
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
                stored=True,
            )
        if amount is None:
            amount = remaining
        elif amount > remaining:
            raise _ApiError(
                400,
                f"Refund amount ({amount}) is greater than unrefunded amount on charge "
                f"({remaining}).",
                param="amount",
                code="amount_too_large",
                stored=True,
            )

        refund = self._fresh("refund")
        refund.update(
            id=self._new_id("re_3", 24),
            amount=amount,
            charge=charge["id"],
            payment_intent=charge["payment_intent"],
            currency=charge["currency"],
            created=int(time.time()),
            metadata=metadata,
            reason=reason,
            balance_transaction=self._new_id("txn_3", 24),
        )
        self.refunds[refund["id"]] = refund
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
        charge["refunds"]["data"].insert(0, refund)
        return 200, self._expand(
            refund, params, {"charge": self.charges, "payment_intent": self.payment_intents}
        )

    def _get_refund(
        self, match: re.Match[str], params: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        refund = self._lookup(self.refunds, match["id"], "refund")
        return 200, self._expand(
            refund, params, {"charge": self.charges, "payment_intent": self.payment_intents}
        )

    def _get_payment_intent(
        self, match: re.Match[str], params: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        pi = self._lookup(self.payment_intents, match["id"], "payment_intent")
        return 200, self._expand(pi, params, {"latest_charge": self.charges})

    def _get_charge(
        self, match: re.Match[str], params: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        charge = self._lookup(self.charges, match["id"], "charge")
        return 200, self._expand(charge, params, {"payment_intent": self.payment_intents})

    def _get_subscription(
        self, match: re.Match[str], _params: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        return 200, self._lookup(self.subscriptions, match["id"], "subscription")

    def _update_subscription(
        self, match: re.Match[str], params: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        subscription = self._lookup(self.subscriptions, match["id"], "subscription")
        unknown = sorted(params.keys() - {"cancel_at_period_end", "metadata"})
        if unknown:
            raise _ApiError(
                400,
                f"FakeStripe does not implement subscription parameter {unknown[0]}.",
                param=unknown[0],
            )
        if subscription["status"] == "canceled":
            raise _ApiError(
                400,
                "A canceled subscription can only update its cancellation_details and metadata.",
                stored=True,
            )
        if "cancel_at_period_end" in params:
            flag = params["cancel_at_period_end"]
            if flag not in ("true", "false"):
                raise _ApiError(
                    400, "Invalid boolean: cancel_at_period_end.", param="cancel_at_period_end"
                )
            item = subscription["items"]["data"][0]
            subscription.update(
                cancel_at_period_end=flag == "true",
                cancel_at=item["current_period_end"] if flag == "true" else None,
                canceled_at=int(time.time()) if flag == "true" else None,
            )
        if "metadata" in params:
            subscription["metadata"].update(_metadata(params["metadata"], "metadata"))
        return 200, subscription

    def _list_invoice_payments(
        self, _match: re.Match[str], params: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        invoice_id = params.get("invoice")
        if not invoice_id:
            raise _ApiError(400, "FakeStripe lists invoice payments by invoice only.")
        invoice = self._lookup(self.invoices, invoice_id, "invoice")
        data = []
        if invoice_id in self._invoice_payments:
            data.append(
                {
                    "id": "inpay_" + invoice_id.removeprefix("in_"),
                    "object": "invoice_payment",
                    "amount_paid": invoice["amount_paid"],
                    "amount_requested": invoice["amount_due"],
                    "created": invoice["status_transitions"]["paid_at"],
                    "currency": invoice["currency"],
                    "invoice": invoice_id,
                    "is_default": True,
                    "livemode": False,
                    "payment": {
                        "type": "payment_intent",
                        "payment_intent": self._invoice_payments[invoice_id],
                    },
                    "status": "paid",
                    "status_transitions": {
                        "canceled_at": None,
                        "paid_at": invoice["status_transitions"]["paid_at"],
                    },
                }
            )
        return 200, {
            "object": "list",
            "data": data,
            "has_more": False,
            "url": "/v1/invoice_payments",
        }

    # ------------------------------------------------------------------ helpers

    def _new_id(self, prefix: str, length: int) -> str:
        return prefix + "".join(self._ids.choices(_ALNUM, k=length))

    def _fresh(self, name: str) -> dict[str, Any]:
        fresh: dict[str, Any] = json.loads(self._templates[name])
        return fresh

    def _session(self, session_id: str) -> dict[str, Any]:
        session = self.sessions[session_id]
        self._expire_if_due(session)
        return session

    def _api_session(self, session_id: str) -> dict[str, Any]:
        if session_id not in self.sessions:
            raise _ApiError(
                404,
                f"No such checkout.session: '{session_id}'",
                param="session",
                code="resource_missing",
            )
        return self._session(session_id)

    def _expire_if_due(self, session: dict[str, Any]) -> None:
        # Stripe expires sessions on its own at expires_at; doing it lazily is enough
        # because nobody can observe a session without going through here.
        if session["status"] == "open" and session["expires_at"] <= time.time():
            session.update(status="expired", url=None)

    @staticmethod
    def _lookup(table: dict[str, dict[str, Any]], object_id: str, kind: str) -> dict[str, Any]:
        obj = table.get(object_id)
        if obj is None:
            raise _ApiError(
                404, f"No such {kind}: '{object_id}'", param="id", code="resource_missing"
            )
        return obj

    def _require(self, ok: bool, session_id: str, message: str) -> None:
        if not ok:
            raise ValueError(f"session {session_id}: {message}")

    def _charge_of(self, session_id: str) -> dict[str, Any]:
        self._session(session_id)
        charge_id = self._state[session_id].charge_id
        if charge_id is None:
            raise ValueError(f"session {session_id} has no charge; call pay() first")
        return self.charges[charge_id]

    def _line_items_list(self, session: dict[str, Any]) -> dict[str, Any]:
        return {
            "object": "list",
            "data": self._state[session["id"]].line_items,
            "has_more": False,
            "url": f"/v1/checkout/sessions/{session['id']}/line_items",
        }

    def _expand_session(self, session: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        expand = _expand_list(params)
        if not expand:
            return session
        out = dict(session)
        for path in expand:
            if path == "line_items":
                out["line_items"] = self._line_items_list(session)
            elif path in ("payment_intent", "payment_intent.latest_charge"):
                pi = self.payment_intents.get(session["payment_intent"] or "")
                if pi is not None:
                    pi = dict(pi)
                    if path.endswith("latest_charge"):
                        pi["latest_charge"] = self.charges.get(
                            pi["latest_charge"] or "", pi["latest_charge"]
                        )
                    out["payment_intent"] = pi
            else:
                raise _ApiError(400, f"This property cannot be expanded ({path}).", param="expand")
        return out

    def _expand(
        self,
        obj: dict[str, Any],
        params: dict[str, Any],
        fields: dict[str, dict[str, dict[str, Any]]],
    ) -> dict[str, Any]:
        expand = _expand_list(params)
        if not expand:
            return obj
        out = dict(obj)
        for path in expand:
            table = fields.get(path)
            if table is None:
                raise _ApiError(400, f"This property cannot be expanded ({path}).", param="expand")
            out[path] = table.get(obj.get(path) or "", obj.get(path))
        return out

    def _reject_unknown(self, params: dict[str, Any], level: str, prefix: str) -> None:
        allowed = self._param_schema.get(level)
        if allowed is None:
            return
        for key in params:
            if key not in allowed:
                name = f"{prefix}[{key}]" if prefix else key
                raise _ApiError(400, f"Received unknown parameter: {name}", param=name)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _fault(status: int) -> _ApiError:
    if status >= 500:
        return _ApiError(
            status, "An unknown error occurred (injected by FakeStripe).", type="api_error"
        )
    if status == 429:
        return _ApiError(
            429,
            "Too many requests hit the API too quickly (injected by FakeStripe).",
            code="rate_limit",
        )
    if status == 409:
        return _ApiError(
            409,
            "This object cannot be accessed right now because another API request or Stripe "
            "process is currently accessing it (injected by FakeStripe).",
            code="lock_timeout",
        )
    if status == 402:
        return _ApiError(
            402,
            "Your card was declined (injected by FakeStripe).",
            type="card_error",
            code="card_declined",
        )
    return _ApiError(status, f"Injected {status} error (FakeStripe).")


def _integer(value: Any, name: str, *, minimum: int | None = None) -> int:
    if value is None or value == "":
        raise _ApiError(
            400, f"Missing required param: {name}.", param=name, code="parameter_missing"
        )
    if isinstance(value, (dict, list)) or not re.fullmatch(r"-?\d+", str(value)):
        raise _ApiError(
            400,
            f"Invalid integer: {value!r} ({name}).",
            param=name,
            code="parameter_invalid_integer",
        )
    number = int(value)
    if minimum is not None and number < minimum:
        raise _ApiError(
            400,
            f"This value must be greater than or equal to {minimum} ({name}).",
            param=name,
            code="parameter_invalid_integer",
        )
    return number


def _currency(value: Any, name: str) -> str:
    if not value:
        raise _ApiError(
            400, f"Missing required param: {name}.", param=name, code="parameter_missing"
        )
    if not isinstance(value, str) or not _CURRENCY_RE.match(value):
        raise _ApiError(
            400,
            f"Invalid currency: {value!r} ({name}).",
            param=name,
            code="parameter_invalid_string",
        )
    return value.lower()


def _metadata(value: Any, name: str) -> dict[str, str]:
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise _ApiError(400, f"Invalid hash: {name}.", param=name)
    if len(value) > 50:
        raise _ApiError(400, f"Invalid {name}: at most 50 keys are allowed.", param=name)
    for key, item in value.items():
        if len(key) > 40:
            raise _ApiError(
                400, f"Invalid {name}: keys must be at most 40 characters ({key!r}).", param=name
            )
        if not isinstance(item, str):
            raise _ApiError(
                400, f"Invalid {name}[{key}]: values must be strings.", param=f"{name}[{key}]"
            )
        if len(item) > 500:
            raise _ApiError(
                400,
                f"Invalid {name}[{key}]: values must be at most 500 characters.",
                param=f"{name}[{key}]",
            )
    # Stripe drops keys sent with an empty value (that is how a key is unset).
    return {k: v for k, v in value.items() if v != ""}


def _expand_list(params: dict[str, Any]) -> list[str]:
    expand = params.get("expand")
    if not expand:
        return []
    return [expand] if isinstance(expand, str) else [str(e) for e in expand]
