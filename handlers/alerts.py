"""The kinds of admin alert, and how an alert's text reaches each admin in their language.

This is the one list of alert kinds: the notifier folds storms into one summary per kind,
`keyvend_alerts_total` is counted per kind, and a summary names its kind in the admin's
language. An alert's text is written where it is raised, as a function of the language
(`lambda language: t(language, "...", ...)`), so the notifier renders it once per admin.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from telegram import InlineKeyboardMarkup

from handlers.i18n import t

# The alert in a given language; called once per admin (and once in English for logs and
# the webhook). It must not hold key text: alerts are about orders.
AlertText = Callable[[str], str]
# Buttons under an alert, in a given language: an alert an admin can act on at once. The
# webhook gets the text alone, and a storm's summary has none (the list the alert names has).
AlertButtons = Callable[[str], InlineKeyboardMarkup]


class AlertKind(StrEnum):
    OUT_OF_STOCK = "out_of_stock"  # paid with nothing left to give
    REVIEW = "review"  # held for a human to check
    REFUND = "refund"
    DISPUTE = "dispute"
    LOW_STOCK = "low_stock"
    UNDELIVERABLE = "undeliverable"  # a message that carries value could not be sent
    KEY_REPORT = "key_report"  # a buyer says a key does not work

    def label(self, language: str) -> str:
        """The kind in the seller's words, for a storm's summary."""
        match self:
            case AlertKind.OUT_OF_STOCK:
                return t(language, "paid with nothing in stock")
            case AlertKind.REVIEW:
                return t(language, "held for review")
            case AlertKind.REFUND:
                return t(language, "refunds")
            case AlertKind.DISPUTE:
                return t(language, "disputes")
            case AlertKind.LOW_STOCK:
                return t(language, "low stock")
            case AlertKind.UNDELIVERABLE:
                return t(language, "failed deliveries")
            case AlertKind.KEY_REPORT:
                return t(language, "keys reported not working")


def summary(kind: AlertKind, count: int) -> AlertText:
    """What a storm of `count` more alerts of one kind becomes."""
    return lambda language: t(
        language,
        "⚠️ {n} more alerts in the last minute: {kind}. See /stats.",
        n=count,
        kind=kind.label(language),
    )
