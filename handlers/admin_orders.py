"""Admin order lookup: `/order ID`, `/find …`, and the order card's buttons (resend keys,
ban the buyer).

The card shows an order's whole story — buyer, items, payments, deliveries, reveals — but
never a key: resending queues a delivery to the buyer, exactly like the buyer's own "show
my keys", so a key only ever goes to its owner's chat. (A refund button waits for the
refund service; until then /confirm and Stripe's dashboard settle money.)
"""

from __future__ import annotations

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.constants import ParseMode

from handlers import render
from handlers.admin import admin_button, admin_only
from handlers.context import KeyvendContext
from handlers.i18n import t, user_language
from store import buyer_views, buyers, lookup
from store.errors import NotFound, OrderNotPayable
from store.models import OrderStatus

_e = render.html.escape


def order_data(order_id: int) -> str:
    return f"ao:{order_id}"


def _language(update: Update) -> str:
    return user_language(update.effective_user.language_code)


async def _reply(update: Update, screen: render.Screen) -> None:
    await update.effective_chat.send_message(
        screen.text, parse_mode=ParseMode.HTML, reply_markup=screen.keyboard
    )


def order_card(o: lookup.OrderCard, language: str) -> render.Screen:
    buyer = t(language, "unknown")
    if o.buyer is not None:
        buyer = str(o.buyer.id) + (f" @{_e(o.buyer.username)}" if o.buyer.username else "")
        if o.buyer.blacklisted:
            buyer += " ⛔"
    lines = [
        t(language, "<b>Order #{order}</b>", order=o.id),
        (
            f"{_e(o.sku)} · {_e(o.product_name)} × {o.quantity} — "
            f"{render.money(o.amount_minor, o.currency, language)} ({_e(o.provider)})"
        ),
        t(language, "Status: {status}", status=render.status_name(OrderStatus(o.status), language)),
        t(language, "Buyer: {buyer}", buyer=buyer),
        t(language, "Placed: {when} UTC", when=f"{o.created_at:%Y-%m-%d %H:%M}"),
        t(language, "Keys held: {n}", n=o.keys),
        "",
        t(language, "<b>Payments</b>"),
    ]
    lines += [f"{at:%m-%d %H:%M} {_e(kind)}" for kind, at in o.payments] or ["—"]
    lines.append(t(language, "<b>Deliveries</b>"))
    lines += [
        f"{kind} · {status} · {attempts}" + (f" · {sent:%m-%d %H:%M}" if sent else "")
        for kind, status, attempts, sent in o.deliveries
    ] or ["—"]
    lines.append(t(language, "<b>Reveals</b>"))
    lines += [f"{at:%m-%d %H:%M} {how}" for how, at in o.reveals] or ["—"]
    rows = []
    if o.status in (OrderStatus.FULFILLED, OrderStatus.DISPUTED):
        rows.append(
            [InlineKeyboardButton(t(language, "🔑 Resend keys"), callback_data=f"ar:{o.id}")]
        )
    if o.buyer is not None and not o.buyer.blacklisted:
        rows.append([InlineKeyboardButton(t(language, "⛔ Ban buyer"), callback_data=f"ab:{o.id}")])
    return render.Screen("\n".join(lines), InlineKeyboardMarkup(rows) if rows else None)


def found_list(found: list[lookup.FoundOrder], query: str, language: str) -> render.Screen:
    if not found:
        return render.Screen(t(language, "Nothing found for {query}.", query=_e(query)))
    rows = [
        [
            InlineKeyboardButton(
                f"#{o.id} · {o.sku} × {o.quantity} · {o.status} · {o.buyer_id}",
                callback_data=order_data(o.id),
            )
        ]
        for o in found
    ]
    return render.Screen(
        t(language, "Orders found for {query}:", query=_e(query)), InlineKeyboardMarkup(rows)
    )


async def _show_card(update: Update, context: KeyvendContext, order_id: int) -> None:
    language = _language(update)
    try:
        card = await lookup.order_card(context.shop.db, order_id)
    except NotFound as exc:
        await _reply(update, render.Screen(_e(str(exc))))
        return
    await _reply(update, order_card(card, language))


@admin_only
async def order(update: Update, context: KeyvendContext) -> None:
    """Show an order's card: `/order ID`."""
    args = context.args or []
    if len(args) != 1 or not args[0].lstrip("#").isdigit():
        await _reply(update, render.Screen(t(_language(update), "Usage: /order ORDER_ID")))
        return
    await _show_card(update, context, int(args[0].lstrip("#")))


@admin_only
async def find(update: Update, context: KeyvendContext) -> None:
    """Find orders: `/find <order id | buyer id | @username | key>`."""
    language = _language(update)
    _, _, query = (update.effective_message.text or "").partition(" ")
    query = query.strip()
    if not query:
        await _reply(
            update,
            render.Screen(t(language, "Usage: /find ORDER_ID | BUYER_ID | @username | KEY")),
        )
        return
    db = context.shop.db
    if query.lstrip("#").isdigit():
        found = await lookup.find_orders(db, order_or_buyer=int(query.lstrip("#")))
    elif query.startswith("@"):
        found = await lookup.find_orders(db, username=query)
    else:
        found = await lookup.find_orders(db, key_digest=context.shop.vault.digest(query))
        # The admin pasted a key: keep it out of the chat history, as /restock does.
        await update.effective_message.delete()
        query = t(language, "that key")
    if len(found) == 1:
        await _show_card(update, context, found[0].id)
        return
    await _reply(update, found_list(found, query, language))


@admin_button
async def open_order(update: Update, context: KeyvendContext) -> None:
    """Open an order's card from a search result (`ao:<order>`)."""
    await update.callback_query.answer()
    await _show_card(update, context, int(update.callback_query.data.split(":")[1]))


@admin_button
async def resend_keys(update: Update, context: KeyvendContext) -> None:
    """Queue the order's keys to its buyer's chat again (`ar:<order>`)."""
    query = update.callback_query
    language = _language(update)
    order_id = int(query.data.split(":")[1])
    try:
        card = await lookup.order_card(context.shop.db, order_id)
        await buyer_views.show_keys_again(
            context.shop.db,
            order_id,
            card.buyer.id if card.buyer else 0,
            admin_id=update.effective_user.id,
        )
    except (NotFound, OrderNotPayable):
        await query.answer(t(language, "This order has no keys to show."), show_alert=True)
        return
    context.shop.wake_delivery()
    await query.answer(t(language, "Keys queued to the buyer's chat."), show_alert=True)


@admin_button
async def ban_buyer(update: Update, context: KeyvendContext) -> None:
    """Ban the buyer of an order (`ab:<order>`)."""
    query = update.callback_query
    language = _language(update)
    order_id = int(query.data.split(":")[1])
    try:
        card = await lookup.order_card(context.shop.db, order_id)
        if card.buyer is None:
            raise NotFound(f"no buyer for order #{order_id}")
        await buyers.ban(
            context.shop.db,
            card.buyer.id,
            f"order #{order_id}",
            admin_id=update.effective_user.id,
        )
    except NotFound as exc:
        await query.answer(str(exc), show_alert=True)
        return
    await query.answer(
        t(language, "Buyer {buyer} is banned.", buyer=card.buyer.id), show_alert=True
    )
