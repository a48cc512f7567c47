"""Buyer-facing Telegram handlers: catalogue, product card, checkout, my orders, help.

Each handler parses the update, calls one store function, and renders the answer. Callback
data carries only ids; the store re-checks them against the database and the user who
pressed the button, so a forged or stale button gets the same answer as a missing thing.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime

from telegram import Update
from telegram.constants import ParseMode
from telegram.error import BadRequest
from telegram.ext import ApplicationHandlerStop, ConversationHandler

from handlers import commands, render
from handlers.context import KeyvendContext, Shop
from handlers.i18n import t, user_language
from store import buyer_views, buyers, catalogue, subscriptions, watchers
from store.coupons import CouponRefused, CouponView, discount
from store.errors import (
    NotFound,
    OrderNotPayable,
    PaymentUnavailable,
    StoreError,
)
from store.models import OrderStatus
from store.payments import SubscriptionGateway

log = logging.getLogger(__name__)

AWAITING_CODE = 0  # the buyer pressed "Enter a code": their next text is the code


def _language(update: Update) -> str:
    user = update.effective_user
    return user_language(user.language_code if user else None)


async def _show(
    update: Update, screen: render.Screen, *, edit: bool = False, broadcast: bool = False
) -> None:
    """Send a screen, or replace the pressed message with it; `broadcast`: the answer may go
    out as Telegram's paid broadcast (a flash sale's cards, where the seller allows it)."""
    query = update.callback_query
    if edit and query is not None and query.message is not None:
        try:
            await query.edit_message_text(
                screen.text, parse_mode=ParseMode.HTML, reply_markup=screen.keyboard
            )
        except BadRequest as exc:
            if "not modified" not in str(exc).lower():
                raise
        return
    await update.effective_chat.send_message(
        screen.text,
        parse_mode=ParseMode.HTML,
        reply_markup=screen.keyboard,
        allow_paid_broadcast=broadcast or None,
    )


async def _tell(update: Update, text: str) -> None:
    """A one-line answer: a toast for a button press, a message otherwise."""
    if update.callback_query is not None:
        await update.callback_query.answer(text, show_alert=True)
    else:
        await update.effective_chat.send_message(text, parse_mode=ParseMode.HTML)


async def throttle(update: Update, context: KeyvendContext) -> None:
    """Stop a user (or a chat without one) that sends more updates than the limit allows."""
    user, chat = update.effective_user, update.effective_chat
    if user is not None and context.shop.is_admin(user.id):
        return
    if update.pre_checkout_query or (update.message and update.message.successful_payment):
        return  # money on its way or arrived: never dropped, whoever sends it
    # Updates without a sender (channel posts) count against their chat; a chat id never
    # collides with a user's id (channels and groups are negative).
    sender = user.id if user is not None else chat.id if chat is not None else None
    if sender is None:
        return
    retry_at = await context.shop.limiter.hit("updates", sender)
    if retry_at is None:
        return
    # Say so once a minute at most: answering every excess update would spend the bot's own
    # sending budget, which key deliveries share, on one flooding user.
    if update.callback_query is not None:
        await update.callback_query.answer(
            render.try_again(retry_at, _language(update)), show_alert=True
        )
    elif (
        user is not None
        and update.message is not None
        and await context.shop.limiter.hit("notices", user.id) is None
    ):
        await chat.send_message(render.try_again(retry_at, _language(update)))
    raise ApplicationHandlerStop


async def start(update: Update, context: KeyvendContext) -> None:
    """Show the catalogue, or open a product (`buy_SKU`) or an order (`paid_ID`) from a link."""
    language = _language(update)
    user = update.effective_user
    await buyers.remember(context.shop.db, user.id, language, username=user.username)
    payload = context.args[0] if context.args else ""
    if payload.startswith("buy_"):
        await _open_product(update, context, sku=payload.removeprefix("buy_"), quantity=1)
    elif payload.startswith("paid_"):
        order_id = _number(payload.removeprefix("paid_"))
        if order_id is None:
            await _tell(update, t(language, "Order not found."))
        else:
            await _returned_from_payment(update, context, order_id)
    else:
        await _show(
            update, render.catalogue(await catalogue.list_products(context.shop.db), language)
        )


async def show_catalogue(update: Update, context: KeyvendContext) -> None:
    """Replace the pressed message with the catalogue."""
    await update.callback_query.answer()
    language = _language(update)
    await _show(
        update,
        render.catalogue(await catalogue.list_products(context.shop.db), language),
        edit=True,
    )


async def show_category(update: Update, context: KeyvendContext) -> None:
    """Replace the pressed message with a page of one category (`cg:<category>:<page>`)."""
    await update.callback_query.answer()
    _, group, page = update.callback_query.data.split(":")
    language = _language(update)
    products = await catalogue.list_products(context.shop.db)
    await _show(update, render.catalogue(products, language, int(group), int(page)), edit=True)


async def buy(update: Update, context: KeyvendContext) -> None:
    """Open a product by SKU: `/buy SKU [QTY] [CODE]`."""
    language = _language(update)
    args = context.args or []
    sku, rest = (args[0], args[1:]) if args else ("", [])
    quantity: int | None = 1
    if rest and rest[0].isdigit():  # any digits, "²" too: a quantity, checked by _number
        quantity, rest = _number(rest[0]), rest[1:]
    if not sku or len(rest) > 1 or quantity is None:
        await _tell(
            update,
            t(
                language,
                "Usage: /buy SKU [quantity] [code], for example /buy GAME-KEY 2 or "
                "/buy GAME-KEY 2 SAVE10",
            ),
        )
        return
    await _open_product(update, context, sku=sku, quantity=quantity, code=rest[0] if rest else None)


_MAX_NUMBER = 999_999_999  # the widest id or quantity the database columns hold (9 digits)


def _number(text: str) -> int | None:
    """A positive number typed by a buyer: ASCII digits only (`str.isdigit` also accepts "²",
    which `int` refuses), and small enough for an id column; None otherwise."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(_MAX_NUMBER)):
        return None
    return int(text)


async def _open_product(
    update: Update, context: KeyvendContext, *, sku: str, quantity: int, code: str | None = None
) -> None:
    language = _language(update)
    try:
        product = await catalogue.get_product(context.shop.db, sku=sku)
    except NotFound:
        await _tell(
            update,
            t(
                language,
                "There is no product {sku}. /start shows the catalogue.",
                sku=render.html.escape(sku),
            ),
        )
        return
    if not product.active:
        await _tell(update, t(language, "This product is no longer on sale."))
        return
    coupon = None
    if code is not None:
        try:
            coupon = await context.shop.coupon_for(code, product.id)
        except CouponRefused as exc:
            await _tell(update, render.coupon_refusal(exc, language))
            return
    shop = context.shop
    await _show(
        update,
        _card(shop, product, update.effective_user.id, quantity, language, coupon),
        broadcast=shop.paid_broadcast,
    )


def _card(
    shop: Shop,
    product: catalogue.ProductView,
    buyer_id: int,
    quantity: int,
    language: str,
    coupon: CouponView | None = None,
) -> render.Screen:
    """The product card: its card payment a pay link when the shop has a PUBLIC_URL, so
    the buyer goes from this one message to the payment page (handlers/paylinks.py)."""
    quantity = 1 if product.every else max(1, min(quantity, product.max_quantity() or 1))
    link = None
    if shop.pay_links is not None and shop.card is not None:
        link = shop.pay_links.url(
            buyer_id=buyer_id,
            product_id=product.id,
            quantity=quantity,
            language=language,
            coupon=coupon.code if coupon else None,
        )
    card_total = product.price_minor * quantity
    offers = [
        render.Offer(
            name,
            unit,
            gateway.currency or product.currency,
            gateway is shop.card,
            product.every,
            link if gateway is shop.card else None,
            discount(coupon, total=unit * quantity, card_total=card_total) if coupon else 0,
        )
        for name, gateway in shop.gateways.items()
        if (unit := product.price_for(name, gateway.currency)) is not None
        and (
            product.every is None
            or (isinstance(gateway, SubscriptionGateway) and product.every in gateway.periods)
        )
    ]
    return render.product_card(product, quantity, language, offers=offers, coupon=coupon)


async def show_product(update: Update, context: KeyvendContext) -> None:
    """Show a product card at the chosen quantity (`p:<product>:<qty>`)."""
    query = update.callback_query
    language = _language(update)
    _, product_id, quantity, *code = query.data.split(":")
    try:
        product = await catalogue.get_product(context.shop.db, product_id=int(product_id))
    except NotFound:
        product = None
    if product is None or not product.active:
        await query.answer(t(language, "This product is no longer on sale."), show_alert=True)
        return
    coupon = None
    if code:
        try:
            coupon = await context.shop.coupon_for(code[0], product.id)
        except CouponRefused as exc:
            await query.answer(render.coupon_refusal(exc, language), show_alert=True)
            return
    await query.answer()
    card = _card(context.shop, product, update.effective_user.id, int(quantity), language, coupon)
    await _show(update, card, edit=True)


async def ask_for_code(update: Update, context: KeyvendContext) -> int:
    """Ask for a coupon code for the product card (`cc:<product>:<qty>`); the next text is it."""
    query = update.callback_query
    _, product_id, quantity = query.data.split(":")
    context.user_data["coupon_for"] = (int(product_id), int(quantity))
    await query.answer()
    await update.effective_chat.send_message(
        t(_language(update), "Send the code as your next message (or /cancel).")
    )
    return AWAITING_CODE


async def receive_code(update: Update, context: KeyvendContext) -> int:
    """Show the product card with the code typed, or the one-line reason it does not apply."""
    product_id, quantity = context.user_data.pop("coupon_for", (0, 1))
    try:
        product = await catalogue.get_product(context.shop.db, product_id=product_id)
    except NotFound:
        await _tell(update, t(_language(update), "This product is no longer on sale."))
        return ConversationHandler.END
    code = update.message.text.strip()
    await _open_product(update, context, sku=product.sku, quantity=quantity, code=code)
    return ConversationHandler.END


async def cancel_code(update: Update, context: KeyvendContext) -> int:
    """Stop waiting for a code."""
    context.user_data.pop("coupon_for", None)
    await update.effective_chat.send_message(
        t(_language(update), "Cancelled; nothing was changed.")
    )
    return ConversationHandler.END


async def notify_me(update: Update, context: KeyvendContext) -> None:
    """Tell this buyer when the sold-out product is restocked (`w:<product>`)."""
    query = update.callback_query
    language = _language(update)
    try:
        await watchers.watch(
            context.shop.db, update.effective_user.id, int(query.data.split(":")[1])
        )
    except NotFound:
        await query.answer(t(language, "This product is no longer on sale."), show_alert=True)
        return
    await query.answer(
        t(language, "I will tell you here when it is back in stock."), show_alert=True
    )


async def pay(update: Update, context: KeyvendContext) -> None:
    """Reserve the keys and open a checkout (`pay:<product>:<qty>[:<provider>]`, the card
    provider when none is named)."""
    query = update.callback_query
    shop = context.shop
    language = _language(update)
    user_id = update.effective_user.id
    _, product_id, quantity, *rest = query.data.split(":")
    provider, code = (rest + ["", ""])[:2]
    gateway = shop.gateways.get(provider) if provider else shop.card
    if gateway is None:
        await _tell(update, t(language, "Payments are not set up yet in this shop."))
        return
    retry_at = await shop.limiter.hit("checkouts", user_id)
    if retry_at is not None:
        await _tell(update, render.try_again(retry_at, language))
        return
    await query.answer(t(language, "Preparing your checkout…"))
    try:
        sale = await shop.checkout(
            gateway,
            buyer_id=user_id,
            language=language,
            product_id=int(product_id),
            quantity=int(quantity),
            coupon=code or None,
        )
    except StoreError as exc:
        await update.effective_chat.send_message(render.checkout_refusal(exc, language))
        return
    if sale.url is None:
        return  # the provider's own invoice, with its pay button, is in the chat already
    amount = render.money(sale.amount_minor, sale.currency, language)
    minutes = int((sale.expires_at - datetime.now(UTC)).total_seconds() // 60)
    await _show(
        update,
        render.checkout_started(
            sale.order_id, sale.quantity, sale.product_name, amount, sale.url, minutes, language
        ),
    )


async def _returned_from_payment(update: Update, context: KeyvendContext, order_id: int) -> None:
    """The buyer came back from the payment page: settle the order now if the webhook is late."""
    shop = context.shop
    language = _language(update)
    user_id = update.effective_user.id
    try:
        order = await buyer_views.buyer_order(shop.db, order_id, user_id, language)
    except NotFound:
        await _tell(update, t(language, "Order not found."))
        return
    if order.status == OrderStatus.PENDING and order.checkout_url:
        # If Stripe cannot answer now, the webhook or reconciliation settles the order.
        with contextlib.suppress(PaymentUnavailable, OrderNotPayable):
            await shop.confirm(order_id)
        order = await buyer_views.buyer_order(shop.db, order_id, user_id, language)
    await _show(update, render.order_detail(order, language))


async def my_orders(update: Update, context: KeyvendContext) -> None:
    """List the buyer's latest orders (`/orders`, or the button back to them)."""
    language = _language(update)
    listing = render.orders_list(
        await buyer_views.buyer_orders(context.shop.db, update.effective_user.id, language),
        language,
    )
    if update.callback_query is not None:
        await update.callback_query.answer()
        await _show(update, listing, edit=True)
    else:
        await _show(update, listing)


async def show_order(update: Update, context: KeyvendContext) -> None:
    """Show one of the buyer's orders (`o:<order>`)."""
    query = update.callback_query
    language = _language(update)
    try:
        order = await buyer_views.buyer_order(
            context.shop.db, int(query.data.split(":")[1]), update.effective_user.id, language
        )
    except NotFound:
        await query.answer(t(language, "Order not found."), show_alert=True)
        return
    await query.answer()
    await _show(update, render.order_detail(order, language), edit=True)


async def show_keys(update: Update, context: KeyvendContext) -> None:
    """Send an order's keys again as a new one-time message (`k:<order>`)."""
    query = update.callback_query
    language = _language(update)
    try:
        await buyer_views.show_keys_again(
            context.shop.db, int(query.data.split(":")[1]), update.effective_user.id
        )
    except NotFound:
        await query.answer(t(language, "Order not found."), show_alert=True)
        return
    except OrderNotPayable:
        await query.answer(t(language, "This order has no keys to show."), show_alert=True)
        return
    context.shop.wake_delivery()
    await query.answer(t(language, "Your keys are on their way."))


async def my_subscriptions(update: Update, context: KeyvendContext) -> None:
    """List the buyer's subscriptions with their next date, each with a cancel button."""
    await _show(update, await _subscriptions(update, context))


async def _subscriptions(update: Update, context: KeyvendContext) -> render.Screen:
    language = _language(update)
    return render.subscriptions_list(
        await subscriptions.buyer_subscriptions(
            context.shop.db, update.effective_user.id, language
        ),
        language,
    )


async def cancel_subscription(update: Update, context: KeyvendContext) -> None:
    """Stop one of the buyer's subscriptions at the end of the period paid (`subx:<id>`)."""
    query = update.callback_query
    shop = context.shop
    language = _language(update)
    subscription_id = int(query.data.split(":")[1])
    try:
        await shop.cancel_subscription(subscription_id, update.effective_user.id)
    except NotFound:
        await query.answer(t(language, "Subscription not found."), show_alert=True)
        return
    except OrderNotPayable:
        await query.answer(t(language, "This subscription has ended already."), show_alert=True)
        return
    except PaymentUnavailable:
        await query.answer(
            t(language, "Cancelling is unavailable right now. Please try again in a minute."),
            show_alert=True,
        )
        return
    await query.answer(
        t(language, "Cancelled: no more payments. Your current period runs to its end.")
    )
    await _show(update, await _subscriptions(update, context), edit=True)


async def paysupport(update: Update, context: KeyvendContext) -> None:
    """Tell the buyer how to get help with a payment (Telegram requires this command)."""
    language = _language(update)
    await update.effective_chat.send_message(
        context.shop.paysupport_text
        or t(
            language,
            "Questions about a payment? Write to the seller here and include your order number "
            "(see /orders). A delivered order that does not work is replaced or refunded.",
        )
    )


async def terms(update: Update, context: KeyvendContext) -> None:
    """Show the seller's terms of sale."""
    language = _language(update)
    await update.effective_chat.send_message(
        context.shop.terms_text
        or t(
            language,
            "Terms: every product is a digital key delivered in this chat right after payment. "
            "Keys are not returnable once shown, except when one does not work; payment "
            "problems: /paysupport.",
        )
    )


async def help_command(update: Update, context: KeyvendContext) -> None:
    """List the commands."""
    language = _language(update)
    await update.effective_chat.send_message(
        commands.help_text(language, is_admin=context.shop.is_admin(update.effective_user.id))
    )


async def unknown(update: Update, context: KeyvendContext) -> None:
    """Answer a command the bot does not have (also what non-admins get for admin commands)."""
    await update.effective_chat.send_message(
        t(_language(update), "Sorry, I don't know that command. /help lists what I can do.")
    )


async def chatter(update: Update, context: KeyvendContext) -> None:
    """Point a buyer who writes free text at the catalogue."""
    await update.effective_chat.send_message(
        t(_language(update), "Send /start to see the catalogue, or /help for all commands.")
    )


async def stale_button(update: Update, context: KeyvendContext) -> None:
    """Answer a button whose data this bot does not understand (old or forged)."""
    await update.callback_query.answer(
        t(_language(update), "This button has expired. Send /start."), show_alert=True
    )
