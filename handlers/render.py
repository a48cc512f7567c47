"""Turning store values into Telegram messages: texts (translated, HTML) and keyboards.

Everything the bot writes is built here, so one place decides how a price, an order or a
key looks. Seller- and buyer-supplied text is always HTML-escaped; a key is shown only
inside a spoiler in a message the delivery worker sends with `protect_content`.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from babel.numbers import format_currency
from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from handlers.i18n import t, tn
from store.broadcasts import BroadcastUsage
from store.buyer_views import OrderView
from store.catalogue import STOCK_DISPLAY_CAP, TEMPLATE_FIELDS, ProductView
from store.coupons import CouponRefused, CouponView, Refusal
from store.deliveries import Job
from store.errors import (
    Blacklisted,
    HoldLimit,
    InvalidInput,
    NotFound,
    OutOfStock,
    OverLimit,
    PaymentUnavailable,
    ProductInactive,
    StoreError,
    TooManyUnpaid,
)
from store.inventory import RestockReport, StockLevels
from store.key_reports import ReportItem
from store.models import DeliveryKind, OrderStatus, Period, SubscriptionStatus
from store.money import STARS, to_major
from store.reports import Stats
from store.subscriptions import SubscriptionView

MESSAGE_LIMIT = 4096
_PLACEHOLDER = re.compile(r"\{(" + "|".join(TEMPLATE_FIELDS) + r")\}")
_LOCALE = {"en": "en_US", "zh": "zh_CN"}


# ---------------------------------------------------------------- callback data
# Opaque ids only; every handler re-checks them against the database and the presser.

CATALOGUE = "cat"
ORDERS = "ords"
CATALOGUE_PAGE = 8  # products per page of the buyer's catalogue


def category_data(group: int, page: int = 0) -> str:
    return f"cg:{group}:{page}"


def product_data(product_id: int, quantity: int = 1, code: str | None = None) -> str:
    """A product card at a quantity, with the buyer's coupon code if they entered one (the
    buyer knows the code, so it may ride in the button; a coupon's id could be guessed)."""
    return f"p:{product_id}:{quantity}" + (f":{code}" if code else "")


def enter_code_data(product_id: int, quantity: int) -> str:
    return f"cc:{product_id}:{quantity}"


def watch_data(product_id: int) -> str:
    return f"w:{product_id}"


def pay_data(
    product_id: int, quantity: int, provider: str | None = None, code: str | None = None
) -> str:
    """Pay through a provider (without one, the shop's card provider), with a coupon code."""
    data = f"pay:{product_id}:{quantity}"
    if provider or code:
        data += f":{provider or ''}"
    return data + (f":{code}" if code else "")


def order_data(order_id: int) -> str:
    return f"o:{order_id}"


def keys_data(order_id: int) -> str:
    return f"k:{order_id}"


def report_data(order_id: int, key_id: int, reason: str | None = None) -> str:
    """A buyer's report on one key: without a reason it asks for one."""
    return f"kr:{order_id}:{key_id}" + (f":{reason}" if reason else "")


def decision_data(choice: str, report_id: int) -> str:
    """An admin's answer to a report: r(eplace), f (refund) or j (reject)."""
    return f"kd:{choice}:{report_id}"


# What a buyer can say is wrong with a key, by the code in the button's data; the report
# records the reason in English (`reason_name(code, DEFAULT)`), the seller's record.
REPORT_REASONS = ("used", "invalid", "region", "other")


# ---------------------------------------------------------------- values


def money(minor: int, currency: str, language: str) -> str:
    if currency == STARS:
        return tn(language, "{n} Star", "{n} Stars", minor)
    return format_currency(
        to_major(minor, currency), currency.upper(), locale=_LOCALE.get(language, "en_US")
    )


def status_name(status: OrderStatus, language: str) -> str:
    names = {
        OrderStatus.PENDING: t(language, "awaiting payment"),
        OrderStatus.FULFILLED: t(language, "delivered"),
        OrderStatus.EXPIRED: t(language, "expired"),
        OrderStatus.CANCELLED: t(language, "cancelled"),
        OrderStatus.BACKORDERED: t(language, "paid, waiting for stock"),
        OrderStatus.REFUND_PENDING: t(language, "being refunded"),
        OrderStatus.REFUNDED: t(language, "refunded"),
        OrderStatus.DISPUTED: t(language, "disputed"),
        OrderStatus.REVIEW: t(language, "paid, under review"),
    }
    return names[status]


def reason_name(code: str, language: str) -> str:
    names = {
        "used": t(language, "Already used"),
        "invalid": t(language, "Not accepted / invalid"),
        "region": t(language, "Wrong region or product"),
        "other": t(language, "Something else"),
    }
    return names[code]


def period_name(every: str, language: str) -> str:
    names = {
        Period.WEEK: t(language, "week"),
        Period.MONTH: t(language, "month"),
        Period.YEAR: t(language, "year"),
    }
    return names[Period(every)]


def subscription_data(subscription_id: int) -> str:
    return f"subx:{subscription_id}"


def _e(text: str) -> str:
    return html.escape(text, quote=False)


@dataclass(frozen=True, slots=True)
class Screen:
    """A message to send or to edit in place."""

    text: str
    keyboard: InlineKeyboardMarkup | None = None


# ---------------------------------------------------------------- buyer screens


def catalogue(
    products: list[ProductView], language: str, group: int | None = None, page: int = 0
) -> Screen:
    """The buyer's catalogue: the categories, or one category's products a page at a time.

    A shop without categories (or with one) goes straight to its products. `group` indexes
    the sorted categories, uncategorised products last; a stale index shows the categories.
    """
    if not products:
        return Screen(t(language, "Nothing is on sale right now. Please check back later."))
    groups = sorted({p.category for p in products}, key=lambda c: (c == "", c))
    other = t(language, "Other")
    if group is None and len(groups) > 1:
        rows = [
            [
                InlineKeyboardButton(
                    f"{name or other} ({count})",
                    callback_data=category_data(i),
                )
            ]
            for i, name in enumerate(groups)
            for count in [sum(p.category == name for p in products)]
        ]
        return Screen(t(language, "Pick a category:"), InlineKeyboardMarkup(rows))
    if group is None or not 0 <= group < len(groups):
        group = 0
    shown = [p for p in products if p.category == groups[group]]
    pages = max(1, -(-len(shown) // CATALOGUE_PAGE))
    page = min(max(page, 0), pages - 1)
    rows = []
    for p in shown[page * CATALOGUE_PAGE : (page + 1) * CATALOGUE_PAGE]:
        price = money(p.price_minor, p.currency, language)
        stock = (
            t(language, "sold out") if p.stock == 0 else t(language, "{n} left", n=_stock(p.stock))
        )
        rows.append(
            [
                InlineKeyboardButton(
                    f"{p.name_in(language)} · {price} · {stock}", callback_data=product_data(p.id)
                )
            ]
        )
    turns = []
    if page > 0:
        turns.append(InlineKeyboardButton("‹", callback_data=category_data(group, page - 1)))
    if pages > 1:
        turns.append(
            InlineKeyboardButton(f"{page + 1}/{pages}", callback_data=category_data(group, page))
        )
    if page < pages - 1:
        turns.append(InlineKeyboardButton("›", callback_data=category_data(group, page + 1)))
    if turns:
        rows.append(turns)
    if len(groups) > 1:
        rows.append([InlineKeyboardButton(t(language, "« Categories"), callback_data=CATALOGUE)])
    title = t(language, "Pick a product:")
    if len(groups) > 1:
        title = f"<b>{_e(groups[group]) or other}</b>\n{title}"
    return Screen(title, InlineKeyboardMarkup(rows))


def _stock(stock: int) -> str:
    return f"{STOCK_DISPLAY_CAP}+" if stock >= STOCK_DISPLAY_CAP else str(stock)


@dataclass(frozen=True, slots=True)
class Offer:
    """A way to pay for a product: through which provider, at what unit price."""

    provider: str
    unit_minor: int
    currency: str
    default: bool = False  # the card provider, whose button data names no provider
    every: str | None = None  # a subscription's period
    url: str | None = None  # a pay link that opens the checkout itself (no button press)
    discount_minor: int = 0  # a coupon's discount on the order, in this offer's currency


def product_card(
    p: ProductView,
    quantity: int,
    language: str,
    *,
    offers: list[Offer],
    coupon: CouponView | None = None,
) -> Screen:
    lines = [f"<b>{_e(p.name_in(language))}</b>"]
    description = p.description_in(language)
    if description:
        lines.append(_e(description))
    lines.append("")
    lines.append(
        t(language, "Price: {price} each", price=money(p.price_minor, p.currency, language))
    )
    if p.stock == 0:
        lines.append(t(language, "Sold out — please check back later."))
        notify = InlineKeyboardButton(t(language, "🔔 Notify me"), callback_data=watch_data(p.id))
        return Screen(
            "\n".join(lines), InlineKeyboardMarkup([[notify], [_back_to_catalogue(language)]])
        )
    total = money(p.price_minor * quantity, p.currency, language)
    lines.append(t(language, "In stock: {n}", n=_stock(p.stock)))
    lines.append(
        t(language, "Quantity: {quantity} — total {total}", quantity=quantity, total=total)
    )
    code = coupon.code if coupon else None
    card = next((o for o in offers if o.currency == p.currency), None)
    if coupon is not None and card is not None:
        lines.append(
            t(
                language,
                "🏷 Code {code}: {total} after the discount",
                code=_e(coupon.code),
                total=money(card.unit_minor * quantity - card.discount_minor, p.currency, language),
            )
        )
    top = p.max_quantity()
    stepper = [
        InlineKeyboardButton("−", callback_data=product_data(p.id, max(1, quantity - 1), code)),
        InlineKeyboardButton(str(quantity), callback_data=product_data(p.id, quantity, code)),
        InlineKeyboardButton("+", callback_data=product_data(p.id, min(top, quantity + 1), code)),
    ]
    rows = [stepper]
    buttons = [_pay_button(p.id, quantity, offer, language, code) for offer in offers]
    if buttons:
        rows.append(buttons)
        if p.every is None:
            rows.append(
                [
                    InlineKeyboardButton(
                        t(language, "🏷 Enter a code"),
                        callback_data=enter_code_data(p.id, quantity),
                    )
                ]
            )
    else:
        lines.append("")
        lines.append(t(language, "Payments are not set up yet in this shop."))
    rows.append([_back_to_catalogue(language)])
    return Screen("\n".join(lines), InlineKeyboardMarkup(rows))


def _pay_button(
    product_id: int, quantity: int, offer: Offer, language: str, code: str | None = None
) -> InlineKeyboardButton:
    total = offer.unit_minor * quantity - offer.discount_minor
    if offer.every is not None:
        label = t(
            language,
            "🔁 Subscribe: {price} a {period}",
            price=money(total, offer.currency, language),
            period=period_name(offer.every, language),
        )
    elif offer.currency == STARS:
        label = t(language, "⭐ Pay {n} Stars", n=total)
    else:
        label = t(language, "💳 Pay {total} by card", total=money(total, offer.currency, language))
    if offer.url is not None:
        return InlineKeyboardButton(label, url=offer.url)
    provider = None if offer.default else offer.provider
    return InlineKeyboardButton(label, callback_data=pay_data(product_id, quantity, provider, code))


def _back_to_catalogue(language: str) -> InlineKeyboardButton:
    return InlineKeyboardButton(t(language, "« Catalogue"), callback_data=CATALOGUE)


def checkout_started(
    order_id: int,
    quantity: int,
    product_name: str,
    amount: str,
    url: str,
    minutes: int,
    language: str,
) -> Screen:
    text = t(
        language,
        "Order #{order}: {quantity} × {product}, {amount}.\n"
        "Pay within {minutes} minutes — your keys arrive in this chat right after payment.",
        order=order_id,
        quantity=quantity,
        product=_e(product_name),
        amount=amount,
        minutes=minutes,
    )
    button = InlineKeyboardButton(t(language, "💳 Pay {amount}", amount=amount), url=url)
    return Screen(text, InlineKeyboardMarkup([[button]]))


def try_again(retry_at: datetime, language: str) -> str:
    seconds = max(1, int((retry_at - datetime.now(UTC)).total_seconds() + 0.999))
    return t(language, "Too many requests — please try again in {seconds} s.", seconds=seconds)


def coupon_refusal(exc: CouponRefused, language: str) -> str:
    """The one-line reason a code cannot be used (nothing changes)."""
    match exc.reason:
        case Refusal.DISABLED:
            return t(language, "That code is no longer valid.")
        case Refusal.EXPIRED:
            return t(language, "That code has expired.")
        case Refusal.USED_UP:
            return t(language, "That code has been used up.")
        case Refusal.WRONG_PRODUCT:
            return t(language, "That code is not valid for this product.")
        case Refusal.SUBSCRIPTION:
            return t(language, "Codes cannot be used for subscriptions.")
    return t(language, "There is no such code. Check it and try again.")


def checkout_refusal(exc: StoreError, language: str) -> str:
    """The one-line reason a checkout could not start (nothing was reserved or charged)."""
    match exc:
        case CouponRefused():
            return coupon_refusal(exc, language)
        case OutOfStock(available=0):
            return t(language, "Sorry, this product just sold out.")
        case OutOfStock(available=n):
            return t(language, "Sorry, only {n} left — please choose a smaller quantity.", n=n)
        case HoldLimit(allowed=n, cap=cap):
            return t(
                language,
                "Your unpaid checkouts already hold as much of this product as one buyer may "
                "({cap}): you can add {n} more. Pay or let one expire first (see /orders).",
                cap=cap,
                n=n,
            )
        case OverLimit(allowed=0):
            return t(
                language, "You have already bought as many of this product as the shop allows."
            )
        case OverLimit(allowed=n):
            return t(language, "You can buy at most {n} of this product now.", n=n)
        case TooManyUnpaid(limit=n):
            return t(
                language,
                "You already have {n} unpaid orders. Pay or let one expire first (see /orders).",
                n=n,
            )
        case Blacklisted():
            return t(language, "Sorry, you can't buy in this shop.")
        case ProductInactive() | NotFound():
            return t(language, "This product is no longer on sale.")
        case PaymentUnavailable():
            return t(
                language,
                "Card payment is unavailable right now — nothing was charged. Please try again in a minute.",
            )
        case InvalidInput():
            return t(language, "That quantity can't be bought.")
    return t(language, "Sorry, that didn't work. Please try again.")


def orders_list(orders: list[OrderView], language: str) -> Screen:
    if not orders:
        return Screen(t(language, "You have no orders yet. /start shows the catalogue."))
    rows = [
        [
            InlineKeyboardButton(
                f"#{o.id} · {o.product_name} × {o.quantity} · {status_name(o.status, language)}",
                callback_data=order_data(o.id),
            )
        ]
        for o in orders
    ]
    return Screen(t(language, "Your orders (newest first):"), InlineKeyboardMarkup(rows))


def order_detail(o: OrderView, language: str) -> Screen:
    lines = [
        t(language, "<b>Order #{order}</b>", order=o.id),
        f"{_e(o.product_name)} × {o.quantity} — {money(o.amount_minor, o.currency, language)}",
        t(language, "Status: {status}", status=status_name(o.status, language)),
        t(language, "Placed: {when} UTC", when=f"{o.created_at:%Y-%m-%d %H:%M}"),
    ]
    rows = []
    if o.status in (OrderStatus.FULFILLED, OrderStatus.DISPUTED):
        rows.append(
            [InlineKeyboardButton(t(language, "🔑 Show my keys"), callback_data=keys_data(o.id))]
        )
    if o.checkout_url:
        rows.append([InlineKeyboardButton(t(language, "💳 Pay"), url=o.checkout_url)])
    rows.append([InlineKeyboardButton(t(language, "« My orders"), callback_data=ORDERS)])
    return Screen("\n".join(lines), InlineKeyboardMarkup(rows))


def report_reasons(order_id: int, key_id: int, language: str) -> Screen:
    """Ask the buyer what is wrong with a key, as buttons (no text to type, nothing to lose)."""
    rows = [
        [
            InlineKeyboardButton(
                reason_name(code, language), callback_data=report_data(order_id, key_id, code)
            )
        ]
        for code in REPORT_REASONS
    ]
    return Screen(
        t(language, "What is wrong with this key of order #{order}?", order=order_id),
        InlineKeyboardMarkup(rows),
    )


def subscriptions_list(subscriptions: list[SubscriptionView], language: str) -> Screen:
    if not subscriptions:
        return Screen(t(language, "You have no subscriptions. /start shows the catalogue."))
    lines, rows = [t(language, "Your subscriptions:")], []
    for s in subscriptions:
        when = f"{s.current_period_end:%Y-%m-%d}" if s.current_period_end else "—"
        if s.status is SubscriptionStatus.ENDED:
            state = t(language, "ended")
        elif s.cancel_at_period_end:
            state = t(language, "cancelled, runs until {date}", date=when)
        elif s.status is SubscriptionStatus.PAST_DUE:
            state = t(language, "payment failed; renews when paid")
        else:
            state = t(language, "next key on {date}", date=when)
        lines.append(f"• {_e(s.product_name)}: {state}")
        if s.status is not SubscriptionStatus.ENDED and not s.cancel_at_period_end:
            rows.append(
                [
                    InlineKeyboardButton(
                        t(language, "✖️ Cancel {product}", product=s.product_name),
                        callback_data=subscription_data(s.id),
                    )
                ]
            )
    return Screen("\n".join(lines), InlineKeyboardMarkup(rows) if rows else None)


# ---------------------------------------------------------------- deliveries


def delivery(job: Job, ttl: timedelta, language: str) -> list[Screen]:
    """The message(s) for a queued delivery; long key lists are split to fit Telegram."""
    if job.kind in (DeliveryKind.KEYS, DeliveryKind.RESHOW):
        return _key_messages(job, ttl, language)
    return [Screen(_notice(job, language))]


def _notice(job: Job, language: str) -> str:
    if job.kind is DeliveryKind.BACKORDERED:
        return t(
            language,
            "✅ Payment received for order #{order} ({product} × {quantity}).\n"
            "It has just sold out: your keys are reserved for you and will arrive here as soon "
            "as the seller restocks.",
            order=job.order_id,
            product=_e(job.product_name),
            quantity=job.quantity,
        )
    if job.kind is DeliveryKind.SUBSCRIPTION_ENDED:
        return t(
            language,
            "Your subscription to {product} has ended, so no more keys will come. "
            "Subscribe again any time from /start.",
            product=_e(job.product_name),
        )
    if job.kind is DeliveryKind.SUBSCRIPTION_PAST_DUE:
        return t(
            language,
            "⚠️ The payment for your subscription to {product} did not go through, so this "
            "period's key is on hold. Update your card on the payment page in the e-mail "
            "about this payment (or pay the invoice there): it is charged again in the next "
            "days, and your key comes here once it is paid. If it is never paid, the "
            "subscription ends. /subscriptions shows its state.",
            product=_e(job.product_name),
        )
    if job.kind is DeliveryKind.RESTOCKED:
        return t(
            language,
            "🔔 {product} is back in stock. Send /start to buy it before it sells out again.",
            product=_e(job.product_name),
        )
    if job.kind is DeliveryKind.REFUNDED:
        return t(
            language,
            "↩️ Order #{order} ({product} × {quantity}) was refunded. The money is on its way "
            "back to you; it can take a few days to show.",
            order=job.order_id,
            product=_e(job.product_name),
            quantity=job.quantity,
        )
    if job.kind is DeliveryKind.REPORT_REJECTED:
        return t(
            language,
            "The seller checked the key you reported in order #{order} ({product}) and found "
            "it working as sold. Questions: /paysupport.",
            order=job.order_id,
            product=_e(job.product_name),
        )
    return t(
        language,
        "✅ Payment received for order #{order}. The seller checks orders like this one "
        "by hand before the keys are sent; you will hear back here.",
        order=job.order_id,
    )


_BUTTONS_PER_MESSAGE = 100  # Telegram's limit for one keyboard
_BUTTONS_PER_ROW = 4


def _key_messages(job: Job, ttl: timedelta, language: str) -> list[Screen]:
    """The keys, each with a "report a problem" button when it can be reported on its own."""
    if job.kind is DeliveryKind.KEYS:
        head = t(language, "✅ Payment received — order #{order}", order=job.order_id)
    else:
        head = t(language, "🔑 Your keys for order #{order}", order=job.order_id)
    head += f"\n{_e(job.product_name)} × {job.quantity}\n"
    minutes = max(1, int(ttl.total_seconds() // 60))
    foot = "\n" + t(
        language,
        "🔒 This message disappears in {minutes} min. Your keys stay in /orders.",
        minutes=minutes,
    )
    ids = job.key_ids if len(job.key_ids) == len(job.keys) else ()
    numbered = len(ids) > 1
    screens: list[Screen] = []
    current, buttons = head, []

    def close() -> None:
        rows = [buttons[i : i + _BUTTONS_PER_ROW] for i in range(0, len(buttons), _BUTTONS_PER_ROW)]
        screens.append(Screen(current + foot, InlineKeyboardMarkup(rows) if rows else None))

    for n, key in enumerate(job.keys, start=1):
        block = (f"{n}. " if numbered else "") + _key_block(job, key)
        full = len(current) + len(block) + len(foot) + 1 > MESSAGE_LIMIT
        if (full or len(buttons) == _BUTTONS_PER_MESSAGE) and current != head:
            close()
            current, buttons = head, []
        current += "\n" + block
        if ids:
            label = t(language, "⚠️ Key {n}", n=n) if numbered else t(language, "⚠️ Report a problem")
            buttons.append(
                InlineKeyboardButton(label, callback_data=report_data(job.order_id, ids[n - 1]))
            )
    close()
    return screens


def _key_block(job: Job, key: str) -> str:
    spoiler = f"<tg-spoiler>{_e(key)}</tg-spoiler>"
    template = _e(job.template) if job.template else "{key}"
    if "{key}" not in template:
        template = "{key}\n" + template
    values = {"key": spoiler, "order": str(job.order_id), "product": _e(job.product_name)}
    # One pass: a substituted value is never scanned again, so a key that reads "{order}"
    # (or a product named "{key}") arrives exactly as written.
    return _PLACEHOLDER.sub(lambda match: values[match[1]], template)


# ---------------------------------------------------------------- admin screens


def report_card(item: ReportItem, language: str) -> Screen:
    """An open report on a key, with the admin's three answers."""
    lines = [
        t(
            language,
            "<b>Report #{report}</b>: a key of order #{order} does not work",
            report=item.report_id,
            order=item.order_id,
        ),
        f"{_e(item.sku)} · {_e(item.product_name)}",
        t(language, "Buyer: {buyer}", buyer=item.buyer_id),
        t(language, "Reason: {reason}", reason=_e(item.reason)),
    ]
    return Screen("\n".join(lines), report_decisions(item.report_id, language))


def report_alert(item: ReportItem, language: str) -> str:
    """The admins' alert for a new report (plain text: the notifier sends no HTML)."""
    return t(
        language,
        "⚠️ Buyer {buyer} reports a key of order #{order} ({sku}) not working: {reason}. "
        "Answer here or in /review.",
        buyer=item.buyer_id,
        order=item.order_id,
        sku=item.sku,
        reason=item.reason,
    )


def report_decisions(report_id: int, language: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton(
                    t(language, "🔁 Replace"), callback_data=decision_data("r", report_id)
                ),
                InlineKeyboardButton(
                    t(language, "↩️ Refund"), callback_data=decision_data("f", report_id)
                ),
                InlineKeyboardButton(
                    t(language, "✖️ Reject"), callback_data=decision_data("j", report_id)
                ),
            ]
        ]
    )


def restock_report(r: RestockReport, language: str) -> str:
    lines = [
        t(
            language,
            "<b>{sku}</b>: added {added}, skipped {duplicates} duplicates, rejected {rejected} lines.",
            sku=_e(r.sku),
            added=r.added,
            duplicates=r.duplicates,
            rejected=r.rejected,
        ),
    ]
    if r.rejected:
        lines.append(
            t(
                language,
                "Rejected: {empty} empty, {too_long} over 1,000 characters, {binary} binary, "
                "{not_utf8} not UTF-8 (save the file as UTF-8).",
                empty=r.empty,
                too_long=r.too_long,
                binary=r.binary,
                not_utf8=r.not_utf8,
            )
        )
    if r.backorders_fulfilled:
        lines.append(
            tn(
                language,
                "Filled {n} backordered order.",
                "Filled {n} backordered orders.",
                len(r.backorders_fulfilled),
            )
        )
    lines.append(t(language, "Available now: {n}.", n=r.available))
    return "\n".join(lines)


def stats(
    s: Stats,
    levels: list[StockLevels],
    language: str,
    *,
    broadcast: BroadcastUsage | None = None,
) -> str:
    lines = [t(language, "<b>Sales</b>")]
    for period in s.periods:
        revenue = ", ".join(money(m, c, language) for c, m in sorted(period.revenue.items())) or "—"
        lines.append(
            t(
                language,
                "{label}: {orders} orders, {revenue}",
                label=_period_label(period.days, language),
                orders=period.orders,
                revenue=revenue,
            )
        )
    lines.append("")
    lines.append(t(language, "<b>Stock</b> (available / reserved / sold)"))
    for level in levels:
        mark = " ⚠️ " + t(language, "low") if level.low and level.active else ""
        off = " " + t(language, "(off sale)") if not level.active else ""
        lines.append(
            f"{_e(level.sku)}: {level.available} / {level.reserved} / {level.sold}{mark}{off}"
        )
    if not levels:
        lines.append(t(language, "No products yet."))
    if s.attention:
        lines.append("")
        lines.append(
            t(
                language,
                "Needs attention: {n} orders (review, refund pending or undelivered).",
                n=s.attention,
            )
        )
    if broadcast is not None:
        lines.append("")
        lines.append(
            t(
                language,
                "Paid broadcast, last {days} days: {n} messages, {beyond} of them past the free "
                "rate: about {stars} ⭐",
                days=BROADCAST_DAYS,
                n=broadcast.messages,
                beyond=broadcast.beyond_free,
                stars=f"{broadcast.beyond_free * STARS_PER_PAID_MESSAGE:.1f}",
            )
        )
    return "\n".join(lines)


BROADCAST_DAYS = 30  # the span /stats reports paid-broadcast costs over
STARS_PER_PAID_MESSAGE = 0.1  # Telegram's price of a message past the free rate


def _period_label(days: int, language: str) -> str:
    return t(language, "Today") if days == 1 else t(language, "Last {days} days", days=days)
