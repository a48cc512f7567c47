"""Reading Stripe's subscription invoices (bot/stripe_webhook.py), without a running app.

An invoice names its order only through the subscription's metadata, and the subscription
under `parent` (Stripe's API since 2025-03) or at the top (before); anything else is not
keyvend's, and a field of the wrong type is a bad event, never a crash.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from bot.stripe_webhook import BadEvent, payment_from_invoice
from store.payments import CheckoutState
from tests.fakes.stripe import template


def invoice(order_id: str | None = "42", **changes: Any) -> dict[str, Any]:
    found = template("invoice")
    found["parent"]["subscription_details"]["metadata"] = {"order_id": order_id} if order_id else {}
    found.update(changes)
    return found


def test_a_paid_invoice_is_one_period_of_the_order_it_names() -> None:
    paid = invoice()

    payment = payment_from_invoice(paid)

    assert payment is not None
    assert (payment.order_id, payment.state) == (42, CheckoutState.PAID)
    assert (payment.payment_ref, payment.subscription_ref) == (
        paid["id"],
        paid["parent"]["subscription_details"]["subscription"],
    )
    assert (payment.amount_minor, payment.currency) == (999, "usd")
    end = paid["lines"]["data"][0]["period"]["end"]
    assert payment.period_end == datetime.fromtimestamp(end, UTC)
    assert payment.checkout_ref is None  # an invoice does not name the checkout


def test_an_invoice_of_the_older_api_names_the_subscription_at_the_top() -> None:
    older = invoice(
        None,
        parent=None,
        subscription="sub_1Older",
        subscription_details={"metadata": {"order_id": "7"}},
    )

    payment = payment_from_invoice(older)

    assert payment is not None and (payment.order_id, payment.subscription_ref) == (7, "sub_1Older")


@pytest.mark.parametrize(
    "changes",
    [
        {"parent": None},  # not a subscription's invoice
        {"parent": {"subscription_details": {"subscription": "sub_1", "metadata": None}}},
        {"parent": {"subscription_details": {"subscription": None, "metadata": {"order_id": "4"}}}},
        {
            "parent": {
                "subscription_details": {"subscription": "sub_1", "metadata": {"order_id": "x"}}
            }
        },
    ],
    ids=["no-parent", "no-metadata", "no-subscription", "order-id-not-a-number"],
)
def test_an_invoice_that_names_no_keyvend_subscription_is_not_ours(changes: dict) -> None:
    assert payment_from_invoice(invoice(**changes)) is None


@pytest.mark.parametrize(
    "changes",
    [
        {"object": "charge"},
        {"amount_paid": -1},
        {"amount_paid": "999"},
        {"currency": "dollars"},
        {"id": ["in_1"]},
    ],
    ids=["not-an-invoice", "negative-amount", "amount-as-text", "currency", "id-not-text"],
)
def test_an_invoice_with_a_field_of_the_wrong_kind_is_a_bad_event(changes: dict) -> None:
    with pytest.raises(BadEvent):
        payment_from_invoice(invoice(**changes))


def test_odd_lines_leave_the_period_end_unknown() -> None:
    odd = invoice(lines={"data": [None, {"period": "soon"}, {"period": {"end": True}}]})

    payment = payment_from_invoice(odd)

    assert payment is not None and payment.period_end is None
