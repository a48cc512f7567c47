"""Tests for the fake Stripe server, driven through the real stripe-python SDK over HTTP.

If these pass, the fake speaks the wire protocol the app's Stripe client expects:
form decoding, idempotency, error shapes the SDK maps to its exception classes,
retries under injected faults, and webhook signatures the SDK verifies.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import stripe

from .stripe import FakeStripe, decode_form

pytestmark = pytest.mark.asyncio

ORDER_ID = 42


def checkout_params(order_id: int = ORDER_ID, **overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "mode": "payment",
        "line_items": [
            {
                "quantity": 2,
                "price_data": {
                    "currency": "usd",
                    "unit_amount": 999,
                    "product_data": {"name": "Game key"},
                },
            }
        ],
        "client_reference_id": str(order_id),
        "metadata": {"order_id": str(order_id)},
        "payment_intent_data": {"metadata": {"order_id": str(order_id)}},
        "expires_at": int(time.time()) + 3600,
        "success_url": f"https://t.me/keyvend_test_bot?start=paid_{order_id}",
        "cancel_url": f"https://t.me/keyvend_test_bot?start=cancel_{order_id}",
    }
    params.update(overrides)
    return params


@pytest.fixture(autouse=True)
def fast_sdk_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK backs off 0.5 s, 1 s, ... between retries; the behaviour under test is
    # *that* it retries, so shrink the waits to keep the file fast.
    monkeypatch.setattr(stripe.HTTPClient, "INITIAL_DELAY", 0.01)
    monkeypatch.setattr(stripe.HTTPClient, "MAX_DELAY", 0.02)


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeStripe]:
    async with FakeStripe(seed=1) as server:
        yield server


class Clients:
    """Builds SDK clients the way the app does and closes their HTTP pools afterwards."""

    def __init__(self, fake: FakeStripe) -> None:
        self._fake = fake
        self._http: list[stripe.HTTPXClient] = []

    def make(
        self, *, api_key: str | None = None, retries: int = 2, timeout: float = 5
    ) -> stripe.StripeClient:
        http = stripe.HTTPXClient(timeout=timeout)
        self._http.append(http)
        return stripe.StripeClient(
            api_key or self._fake.api_key,
            base_addresses={"api": self._fake.url},
            http_client=http,
            max_network_retries=retries,
        )

    async def close(self) -> None:
        for http in self._http:
            await http.close_async()  # type: ignore[no-untyped-call]


@pytest_asyncio.fixture
async def clients(fake: FakeStripe) -> AsyncIterator[Clients]:
    made = Clients(fake)
    yield made
    await made.close()


@pytest.fixture
def client(clients: Clients) -> stripe.StripeClient:
    return clients.make()


async def create(
    client: stripe.StripeClient,
    key: str = "checkout-order-42",
    base: dict[str, Any] | None = None,
    **overrides: Any,
) -> Any:
    # Callers that resend under one key pass the same ``base``: expires_at is computed
    # from the clock, and a tick between calls would make the params differ.
    params: Any = {**(base if base is not None else checkout_params()), **overrides}
    return await client.v1.checkout.sessions.create_async(
        params=params, options={"idempotency_key": key}
    )


# ---------------------------------------------------------------- checkout sessions


async def test_create_returns_open_session_with_url_and_total(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    session = await create(client)

    assert session.id.startswith("cs_test_")
    assert session.url == f"{fake.url}/pay/{session.id}"
    assert session.amount_total == 1998
    assert session.currency == "usd"
    assert (session.status, session.payment_status, session.payment_intent) == (
        "open",
        "unpaid",
        None,
    )
    assert session.client_reference_id == "42"
    assert session.metadata.to_dict() == {"order_id": "42"}
    assert fake.session_for_order(42)["id"] == session.id
    assert fake.sessions[session.id]["success_url"] == "https://t.me/keyvend_test_bot?start=paid_42"

    call = fake.requests[-1]
    assert (call.method, call.path, call.idempotency_key, call.status) == (
        "POST",
        "/v1/checkout/sessions",
        "checkout-order-42",
        200,
    )
    assert call.params["line_items"] == [
        {
            "quantity": "2",
            "price_data": {
                "currency": "usd",
                "unit_amount": "999",
                "product_data": {"name": "Game key"},
            },
        }
    ]

    async with httpx.AsyncClient() as browser:
        page = await browser.get(session.url)
    assert page.status_code == 200
    assert session.id in page.text and "1998 USD" in page.text


async def test_same_idempotency_key_replays_first_response(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    base = checkout_params()
    first = await create(client, base=base)
    second = await create(client, base=base)

    assert second.id == first.id
    assert len(fake.sessions) == 1
    assert second.last_response.headers["Idempotent-Replayed"] == "true"
    assert second.last_response.body == first.last_response.body


async def test_same_idempotency_key_with_other_params_is_rejected(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    base = checkout_params()
    await create(client, base=base)
    with pytest.raises(stripe.IdempotencyError):
        await create(
            client,
            base=base,
            line_items=[
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": 999,
                        "product_data": {"name": "Game key"},
                    },
                }
            ],
        )
    assert len(fake.sessions) == 1


async def test_idempotency_keys_are_scoped_per_api_key(fake: FakeStripe, clients: Clients) -> None:
    first = await create(clients.make())
    fake.api_key = "sk_test_rotatedkey000000000000000"
    second = await create(clients.make(api_key="sk_test_rotatedkey000000000000000"))
    assert second.id != first.id
    assert len(fake.sessions) == 2


async def test_retrieve_and_expire(fake: FakeStripe, client: stripe.StripeClient) -> None:
    created = await create(client)

    fetched = await client.v1.checkout.sessions.retrieve_async(created.id)
    assert (fetched.id, fetched.amount_total, fetched.status) == (created.id, 1998, "open")

    expired = await client.v1.checkout.sessions.expire_async(created.id)
    assert expired.status == "expired" and expired.url is None
    assert fake.sessions[created.id]["status"] == "expired"

    with pytest.raises(stripe.InvalidRequestError) as again:
        await client.v1.checkout.sessions.expire_async(created.id)
    assert again.value.http_status == 400

    with pytest.raises(stripe.InvalidRequestError) as missing:
        await client.v1.checkout.sessions.retrieve_async("cs_test_nope")
    assert (missing.value.http_status, missing.value.code) == (404, "resource_missing")


async def test_retrieve_can_expand_payment_intent_and_line_items(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    created = await create(client)
    fake.pay(created.id)
    fetched = await client.v1.checkout.sessions.retrieve_async(
        created.id, params={"expand": ["payment_intent.latest_charge", "line_items"]}
    )
    pi = fetched.payment_intent
    assert isinstance(pi, stripe.PaymentIntent) and pi.status == "succeeded"
    assert isinstance(pi.latest_charge, stripe.Charge) and pi.latest_charge.amount == 1998
    assert fetched.line_items is not None
    assert [(li.description, li.quantity) for li in fetched.line_items.data] == [("Game key", 2)]


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"expires_at": int(time.time()) + 600}, "expires_at"),
        ({"expires_at": int(time.time()) + 2 * 86400}, "expires_at"),
        ({"mode": None}, "mode"),
        ({"success_url": None}, "success_url"),
        (
            {
                "line_items": [
                    {
                        "quantity": 0,
                        "price_data": {
                            "currency": "usd",
                            "unit_amount": 999,
                            "product_data": {"name": "Game key"},
                        },
                    }
                ]
            },
            "line_items[0][quantity]",
        ),
        (
            {
                "line_items": [
                    {
                        "quantity": 1,
                        "price_data": {
                            "currency": "usd",
                            "unit_amount": "9.99",
                            "product_data": {"name": "Game key"},
                        },
                    }
                ]
            },
            "line_items[0][price_data][unit_amount]",
        ),
        (
            {
                "line_items": [
                    {"quantity": 1, "price_data": {"currency": "usd", "unit_amount": 999}}
                ]
            },
            "line_items[0][price_data][product_data][name]",
        ),
        (
            {
                "line_items": [
                    {
                        "quantity": 1,
                        "price_data": {"unit_amount": 999, "product_data": {"name": "x"}},
                    }
                ]
            },
            "line_items[0][price_data][currency]",
        ),
        ({"payment_intent_data": {"metadat": {"order_id": "42"}}}, "payment_intent_data[metadat]"),
        ({"client_reference": "42"}, "client_reference"),
    ],
)
async def test_invalid_checkout_params_are_rejected_naming_the_param(
    fake: FakeStripe, client: stripe.StripeClient, overrides: dict[str, Any], param: str
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as err:
        await create(client, **overrides)
    assert err.value.http_status == 400
    assert err.value.param == param
    assert param in err.value.user_message
    assert fake.sessions == {}


async def test_wrong_api_key_is_unauthorized(fake: FakeStripe, clients: Clients) -> None:
    with pytest.raises(stripe.AuthenticationError):
        await create(clients.make(api_key="sk_test_wrong000000000000000000"))
    assert fake.requests[-1].status == 401
    assert fake.sessions == {}


# ---------------------------------------------------------------- fault injection


async def test_one_injected_500_is_retried_with_the_same_key(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    fake.fail_next(1)
    session = await create(client)

    assert list(fake.sessions) == [session.id]
    assert [(r.status, r.idempotency_key) for r in fake.requests] == [
        (500, "checkout-order-42"),
        (200, "checkout-order-42"),
    ]


async def test_persistent_500s_surface_as_api_error(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    fake.fail_next(5)
    with pytest.raises(stripe.APIError) as err:
        await create(client)
    assert err.value.http_status == 500
    assert [r.status for r in fake.requests] == [500, 500, 500]  # first try + 2 retries
    assert fake.failures_pending == 2
    assert fake.sessions == {}


async def test_fail_rate_one_fails_every_call(fake: FakeStripe, clients: Clients) -> None:
    fake.fail_rate = 1.0
    with pytest.raises(stripe.APIError):
        await create(clients.make(retries=0))
    fake.fail_rate = 0.0
    assert (await create(clients.make(retries=0))).amount_total == 1998


async def test_down_drops_connections_then_recovers(fake: FakeStripe, clients: Clients) -> None:
    client = clients.make(retries=0)
    fake.down = True
    with pytest.raises(stripe.APIConnectionError):
        await create(client)
    assert fake.requests[-1].status == 0
    fake.down = False
    assert (await create(client)).status == "open"
    assert len(fake.sessions) == 1


async def test_delay_causes_timeout_and_retry_gets_the_session_created_meanwhile(
    fake: FakeStripe, clients: Clients
) -> None:
    base = checkout_params()
    fake.delay = 0.5
    with pytest.raises(stripe.APIConnectionError):
        await create(clients.make(retries=0, timeout=0.1), base=base)
    # Stripe did the work even though the client never saw the answer.
    assert len(fake.sessions) == 1
    fake.delay = 0.0
    session = await create(clients.make(retries=0), base=base)
    assert list(fake.sessions) == [session.id]
    assert fake.requests[-1].status == 200


# ---------------------------------------------------------------- payments and refunds


async def test_pay_then_refund_with_idempotent_replay(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    session = await create(client)
    paid = fake.pay(session.id)
    assert (paid["status"], paid["payment_status"]) == ("complete", "paid")
    pi_id = paid["payment_intent"]
    assert pi_id.startswith("pi_")

    pi = await client.v1.payment_intents.retrieve_async(pi_id)
    assert (pi.status, pi.amount, pi.metadata.to_dict()) == ("succeeded", 1998, {"order_id": "42"})
    charge_id = pi.latest_charge
    assert isinstance(charge_id, str) and charge_id.startswith("ch_")

    args: dict[str, Any] = {
        "params": {"payment_intent": pi_id, "metadata": {"order_id": "42"}},
        "options": {"idempotency_key": "refund-order-42"},
    }
    refund = await client.v1.refunds.create_async(**args)
    replay = await client.v1.refunds.create_async(**args)
    assert replay.id == refund.id
    assert list(fake.refunds) == [refund.id]
    assert (refund.amount, refund.status, refund.payment_intent) == (1998, "succeeded", pi_id)
    assert (await client.v1.refunds.retrieve_async(refund.id)).charge == charge_id
    assert fake.charges[charge_id]["refunded"] is True

    with pytest.raises(stripe.InvalidRequestError) as err:
        await client.v1.refunds.create_async(
            params={"payment_intent": pi_id}, options={"idempotency_key": "refund-order-42-again"}
        )
    assert err.value.code == "charge_already_refunded"


async def test_rejected_params_do_not_burn_the_idempotency_key(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    with pytest.raises(stripe.InvalidRequestError):
        await create(client, expires_at=int(time.time()) + 60)
    # Stripe stores nothing for a request that failed validation, so the fixed
    # request may reuse the key instead of tripping an idempotency_error.
    session = await create(client)
    assert list(fake.sessions) == [session.id]


async def test_errors_from_execution_are_replayed_under_the_key(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    session = await create(client)
    pi_id = fake.pay(session.id)["payment_intent"]
    await client.v1.refunds.create_async(params={"payment_intent": pi_id})

    replayed: list[str | None] = []
    for _ in range(2):
        with pytest.raises(stripe.InvalidRequestError) as err:
            await client.v1.refunds.create_async(
                params={"payment_intent": pi_id}, options={"idempotency_key": "refund-again"}
            )
        assert err.value.code == "charge_already_refunded"
        assert err.value.headers is not None
        replayed.append(err.value.headers.get("Idempotent-Replayed"))
    assert replayed == [None, "true"]
    assert len(fake.refunds) == 1


async def test_partial_refund_then_too_large_refund(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    session = await create(client)
    pi_id = fake.pay(session.id)["payment_intent"]
    await client.v1.refunds.create_async(params={"payment_intent": pi_id, "amount": 500})
    with pytest.raises(stripe.InvalidRequestError) as err:
        await client.v1.refunds.create_async(params={"payment_intent": pi_id, "amount": 1500})
    assert (err.value.code, err.value.param) == ("amount_too_large", "amount")
    charge = fake.charges[fake.payment_intents[pi_id]["latest_charge"]]
    assert (charge["amount_refunded"], charge["refunded"]) == (500, False)


async def test_pay_can_report_a_mismatched_amount(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    session = await create(client)
    fake.pay(session.id, amount_total=1, currency="eur")
    fetched = await client.v1.checkout.sessions.retrieve_async(session.id)
    assert (fetched.amount_total, fetched.currency) == (1, "eur")


async def test_async_payment_settles_or_fails(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    ok = await create(client, key="k-ok")
    bad = await create(client, key="k-bad", client_reference_id="43")

    assert fake.pay(ok.id, async_method=True)["payment_status"] == "unpaid"
    fake.pay(bad.id, async_method=True)
    with pytest.raises(ValueError):
        fake.async_succeeded_event(ok.id)  # not settled yet

    assert fake.settle_async(ok.id)["payment_status"] == "paid"
    assert fake.settle_async(bad.id, succeeded=False)["payment_status"] == "unpaid"
    assert fake.async_succeeded_event(ok.id)["type"] == "checkout.session.async_payment_succeeded"
    assert fake.async_failed_event(bad.id)["data"]["object"]["id"] == bad.id
    assert fake.session_for_order(43)["id"] == bad.id

    with pytest.raises(stripe.InvalidRequestError) as err:
        await client.v1.refunds.create_async(
            params={"payment_intent": fake.sessions[bad.id]["payment_intent"]}
        )
    assert err.value.code == "charge_not_refundable"


async def test_state_helpers_refuse_impossible_transitions(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    session = await create(client)
    with pytest.raises(ValueError):
        fake.completed_event(session.id)
    fake.expire(session.id)
    with pytest.raises(ValueError):
        fake.pay(session.id)
    assert fake.expired_event(session.id)["data"]["object"]["status"] == "expired"
    with pytest.raises(KeyError):
        fake.session_for_order(999)


# ---------------------------------------------------------------- events and signatures


async def test_events_are_shaped_from_the_fixtures(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    session = await create(client)
    fake.pay(session.id)

    completed = fake.completed_event(session.id)
    assert completed["object"] == "event" and completed["id"].startswith("evt_")
    assert completed["type"] == "checkout.session.completed"
    assert completed["livemode"] is False and completed["api_version"]
    assert abs(completed["created"] - time.time()) < 5
    obj = completed["data"]["object"]
    assert (obj["id"], obj["payment_status"], obj["amount_total"], obj["client_reference_id"]) == (
        session.id,
        "paid",
        1998,
        "42",
    )
    assert fake.completed_event(session.id)["id"] != completed["id"]

    refunded = fake.charge_refunded_event(session.id)["data"]["object"]
    assert refunded["object"] == "charge"
    assert refunded["payment_intent"] == fake.sessions[session.id]["payment_intent"]
    assert (refunded["amount"], refunded["amount_refunded"], refunded["refunded"]) == (
        1998,
        1998,
        True,
    )
    assert refunded["metadata"] == {"order_id": "42"} and refunded["currency"] == "usd"
    partial = fake.charge_refunded_event(session.id, amount_refunded=500)["data"]["object"]
    assert (partial["amount_refunded"], partial["refunded"]) == (500, False)

    dispute_event = fake.dispute_created_event(session.id)
    dispute = dispute_event["data"]["object"]
    assert dispute_event["type"] == "charge.dispute.created"
    assert (
        dispute["object"],
        dispute["charge"],
        dispute["amount"],
        dispute["reason"],
        dispute["status"],
    ) == ("dispute", refunded["id"], 1998, "fraudulent", "needs_response")


async def test_signed_event_verifies_and_tampering_is_detected(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    session = await create(client)
    fake.pay(session.id)
    body, headers = fake.signed(fake.completed_event(session.id))

    assert headers["Content-Type"] == "application/json"
    assert stripe.WebhookSignature.verify_header(
        body, headers["Stripe-Signature"], fake.webhook_secret, tolerance=300
    )
    event = stripe.Webhook.construct_event(body, headers["Stripe-Signature"], fake.webhook_secret)
    assert event.type == "checkout.session.completed" and event.data.object.id == session.id
    assert json.loads(body)["data"]["object"]["metadata"] == {"order_id": "42"}

    tampered = body.replace(b'"amount_total":1998', b'"amount_total":1')
    assert tampered != body
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(
            tampered, headers["Stripe-Signature"], fake.webhook_secret, tolerance=300
        )
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(
            body, headers["Stripe-Signature"], "whsec_other", tolerance=300
        )
    stale = fake.sign(body, timestamp=int(time.time()) - 3600)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(body, stale, fake.webhook_secret, tolerance=300)


async def test_decode_form_rebuilds_nested_params() -> None:
    pairs = [
        ("line_items[0][price_data][unit_amount]", "999"),
        ("line_items[0][quantity]", "2"),
        ("line_items[1][quantity]", "1"),
        ("metadata[0]", "zero"),
        ("expand[]", "a"),
        ("expand[]", "b"),
        ("plain", ""),
    ]
    assert decode_form(pairs) == {
        "line_items": [{"price_data": {"unit_amount": "999"}, "quantity": "2"}, {"quantity": "1"}],
        "metadata": {"0": "zero"},
        "expand": ["a", "b"],
        "plain": "",
    }


# ---------------------------------------------------------------- subscriptions


def subscription_params(order_id: int = ORDER_ID) -> dict[str, Any]:
    params = checkout_params(order_id, mode="subscription")
    del params["payment_intent_data"]
    params["line_items"][0]["quantity"] = 1
    params["line_items"][0]["price_data"]["recurring"] = {"interval": "month"}
    params["subscription_data"] = {"metadata": {"order_id": str(order_id)}}
    return params


async def test_a_subscription_checkout_starts_a_subscription_billed_by_invoices(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    session = await create(client, base=subscription_params())
    fake.pay(session.id)

    paid = await client.v1.checkout.sessions.retrieve_async(session.id)
    subscription = fake.subscription_for_order(ORDER_ID)
    first = fake.invoices[paid.invoice]
    assert (paid.mode, paid.payment_status, paid.payment_intent) == ("subscription", "paid", None)
    assert paid.subscription == subscription["id"] and subscription["status"] == "active"
    assert subscription["metadata"] == {"order_id": str(ORDER_ID)}
    assert first["billing_reason"] == "subscription_create" and first["status"] == "paid"
    assert first["parent"]["subscription_details"] == {
        "metadata": {"order_id": str(ORDER_ID)},
        "subscription": subscription["id"],
    }

    unpaid = fake.renew(subscription["id"], paid=False)
    assert (unpaid["status"], subscription["status"]) == ("open", "past_due")
    assert (
        fake.invoice_event("invoice.payment_failed", unpaid["id"])["data"]["object"]["id"]
        == (unpaid["id"])
    )
    fake.pay_invoice(unpaid["id"])
    renewed = fake.renew(subscription["id"])
    item = subscription["items"]["data"][0]
    assert subscription["status"] == "active"
    assert renewed["lines"]["data"][0]["period"]["end"] == item["current_period_end"]
    assert len({first["id"], unpaid["id"], renewed["id"]}) == 3

    payments = await client.v1.invoice_payments.list_async(params={"invoice": renewed["id"]})
    assert [p.payment.payment_intent for p in payments.data] == [
        fake.payment_of_invoice(renewed["id"])
    ]


async def test_a_subscription_is_cancelled_at_the_period_end_then_deleted(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    session = await create(client, base=subscription_params())
    fake.pay(session.id)
    subscription_id = fake.subscription_for_order(ORDER_ID)["id"]

    updated = await client.v1.subscriptions.update_async(
        subscription_id, params={"cancel_at_period_end": True}
    )
    assert updated.cancel_at_period_end is True and updated.status == "active"

    fake.end_subscription(subscription_id)
    deleted = fake.subscription_deleted_event(subscription_id)["data"]["object"]
    assert (deleted["id"], deleted["status"]) == (subscription_id, "canceled")
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.subscriptions.update_async(
            subscription_id, params={"cancel_at_period_end": False}
        )


async def test_subscription_mode_needs_a_recurring_price(client: stripe.StripeClient) -> None:
    params = subscription_params()
    del params["line_items"][0]["price_data"]["recurring"]

    with pytest.raises(stripe.InvalidRequestError) as refused:
        await create(client, base=params)

    assert refused.value.param == "line_items[0][price_data][recurring]"
