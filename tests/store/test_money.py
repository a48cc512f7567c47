"""Currencies: only what Stripe can charge in, and amounts in each one's smallest unit."""

from __future__ import annotations

import pytest

from store.errors import InvalidInput
from store.money import STRIPE_CURRENCIES, THREE_DECIMAL, ZERO_DECIMAL, check_currency, to_minor


@pytest.mark.parametrize("code", ["usd", "EUR", " gbp ", "jpy", "cny", "xof"])
def test_a_currency_stripe_charges_in_is_taken_in_its_lower_case(code: str) -> None:
    assert check_currency(code) == code.strip().lower()


@pytest.mark.parametrize(
    ("code", "says"),
    [
        ("abc", "ABC is not a currency Stripe can charge in"),
        ("xyz", "XYZ is not a currency Stripe can charge in"),
        ("btc", "BTC is not a currency Stripe can charge in"),
        ("xtr", "XTR is not a currency Stripe can charge in"),  # Stars are priced apart
        ("us", "not a three-letter ISO code"),
        ("usdt", "not a three-letter ISO code"),
        ("u$d", "not a three-letter ISO code"),
        ("kwd", "KWD is not supported"),
    ],
)
def test_anything_else_is_refused_in_one_line(code: str, says: str) -> None:
    with pytest.raises(InvalidInput, match=says.replace("$", r"\$")):
        check_currency(code)


def test_the_decimal_exceptions_are_currencies_stripe_knows() -> None:
    assert ZERO_DECIMAL <= STRIPE_CURRENCIES
    assert THREE_DECIMAL <= STRIPE_CURRENCIES
    assert all(len(code) == 3 and code.isalpha() and code.islower() for code in STRIPE_CURRENCIES)


def test_prices_count_in_the_smallest_unit_of_their_currency() -> None:
    assert to_minor("9.99", "usd") == 999
    assert to_minor("1000", "jpy") == 1000
    with pytest.raises(InvalidInput, match="JPY has 0 decimal places"):
        to_minor("9.99", "jpy")
    with pytest.raises(InvalidInput, match="not a currency Stripe can charge in"):
        to_minor("9.99", "abc")
