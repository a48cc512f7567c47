"""Money as integers of the currency's smallest unit, the way payment providers count it."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from store.errors import InvalidInput

# The ISO 4217 codes Stripe can charge in (its "presentment currencies",
# https://docs.stripe.com/currencies), lower-case as its API writes them. Some work only with
# some payment methods or account countries; Stripe answers for those at checkout.
STRIPE_CURRENCIES = frozenset(
    [
        "aed",
        "afn",
        "all",
        "amd",
        "ang",
        "aoa",
        "ars",
        "aud",
        "awg",
        "azn",
        "bam",
        "bbd",
        "bdt",
        "bgn",
        "bhd",
        "bif",
        "bmd",
        "bnd",
        "bob",
        "brl",
        "bsd",
        "bwp",
        "byn",
        "bzd",
        "cad",
        "cdf",
        "chf",
        "clp",
        "cny",
        "cop",
        "crc",
        "cve",
        "czk",
        "djf",
        "dkk",
        "dop",
        "dzd",
        "egp",
        "etb",
        "eur",
        "fjd",
        "fkp",
        "gbp",
        "gel",
        "gip",
        "gmd",
        "gnf",
        "gtq",
        "gyd",
        "hkd",
        "hnl",
        "htg",
        "huf",
        "idr",
        "ils",
        "inr",
        "isk",
        "jmd",
        "jod",
        "jpy",
        "kes",
        "kgs",
        "khr",
        "kmf",
        "krw",
        "kwd",
        "kyd",
        "kzt",
        "lak",
        "lbp",
        "lkr",
        "lrd",
        "lsl",
        "mad",
        "mdl",
        "mga",
        "mkd",
        "mmk",
        "mnt",
        "mop",
        "mur",
        "mvr",
        "mwk",
        "mxn",
        "myr",
        "mzn",
        "nad",
        "ngn",
        "nio",
        "nok",
        "npr",
        "nzd",
        "omr",
        "pab",
        "pen",
        "pgk",
        "php",
        "pkr",
        "pln",
        "pyg",
        "qar",
        "ron",
        "rsd",
        "rub",
        "rwf",
        "sar",
        "sbd",
        "scr",
        "sek",
        "sgd",
        "shp",
        "sle",
        "sos",
        "srd",
        "std",
        "szl",
        "thb",
        "tjs",
        "tnd",
        "top",
        "try",
        "ttd",
        "twd",
        "tzs",
        "uah",
        "ugx",
        "usd",
        "uyu",
        "uzs",
        "vnd",
        "vuv",
        "wst",
        "xaf",
        "xcd",
        "xcg",
        "xof",
        "xpf",
        "yer",
        "zar",
        "zmw",
    ]
)
# Stripe's zero-decimal currencies: amounts are whole units (1000 JPY is 1000, not 100000).
ZERO_DECIMAL = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)
# Three-decimal currencies need amounts rounded to tens in Stripe; not supported here.
THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])
STARS = "xtr"  # Telegram Stars: whole stars
MAX_AMOUNT = 99_999_999  # Stripe's per-charge ceiling, and ours for any provider


def exponent(currency: str) -> int:
    currency = currency.lower()
    return 0 if currency in ZERO_DECIMAL or currency == STARS else 2


def to_minor(amount: str | Decimal, currency: str) -> int:
    """Parse a price such as "9.99" into minor units of `currency` (999)."""
    currency = check_currency(currency)
    try:
        value = Decimal(str(amount).strip())
    except InvalidOperation:
        raise InvalidInput(f"price {amount!r} is not a number") from None
    if not value.is_finite() or value <= 0:
        raise InvalidInput("price must be a positive number")
    minor = value.scaleb(exponent(currency))
    if minor != minor.to_integral_value():
        raise InvalidInput(f"{currency.upper()} has {exponent(currency)} decimal places")
    if minor > MAX_AMOUNT:
        raise InvalidInput("price is above what a card payment can take")
    return int(minor)


def to_major(minor: int, currency: str) -> Decimal:
    return Decimal(minor).scaleb(-exponent(currency))


def check_currency(currency: str) -> str:
    """`currency` as Stripe writes it (lower case), if Stripe can charge in it and so can we."""
    currency = currency.strip().lower()
    if len(currency) != 3 or not currency.isalpha():
        raise InvalidInput(f"currency {currency!r} is not a three-letter ISO code, like usd")
    if currency not in STRIPE_CURRENCIES:
        raise InvalidInput(
            f"{currency.upper()} is not a currency Stripe can charge in "
            "(ISO 4217 codes: usd, eur, gbp, jpy, ...)"
        )
    if currency in THREE_DECIMAL:
        raise InvalidInput(f"{currency.upper()} is not supported (Stripe rounds it to tens)")
    return currency
