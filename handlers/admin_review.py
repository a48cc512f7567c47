"""The review queue in the chat: `/review` lists the paid orders waiting for an admin, each
with Approve (the keys go out) and Reject (the money goes back) buttons, and then the keys
buyers reported not working (handlers/key_reports.py answers those).

A decision is taken once, by the database (store/review.py): an admin who presses after
another decided is told so, and nothing happens twice. A rejected order's money goes back
through its own provider (`Shop.reject_review`): the decision makes the refund owed, and
`Shop.refund` makes it at once; if the provider cannot be reached, the refund job keeps
trying.
"""

from __future__ import annotations

import contextlib

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.constants import ParseMode
from telegram.error import TelegramError

from handlers import key_reports, render
from handlers.admin import admin_button, admin_only
from handlers.context import KeyvendContext
from handlers.i18n import t, user_language
from store import review
from store.errors import NotFound, OrderNotPayable, OutOfStock, PaymentUnavailable

_e = render.html.escape
_MAX_LISTED = 20


def _language(update: Update) -> str:
    return user_language(update.effective_user.language_code)


def review_card(item: review.ReviewItem, language: str) -> render.Screen:
    """An order waiting for review, with its two buttons."""
    lines = [
        t(language, "<b>Order #{order}</b> waits for review", order=item.order_id),
        (
            f"{_e(item.sku)} · {_e(item.product_name)} × {item.quantity} — "
            f"{render.money(item.amount_minor, item.currency, language)} ({_e(item.provider)})"
        ),
        t(language, "Buyer: {buyer}", buyer=item.buyer_id),
    ]
    if item.mismatch and item.paid_amount_minor is not None and item.paid_currency:
        paid = render.money(item.paid_amount_minor, item.paid_currency, language)
        lines.append(t(language, "⚠️ Paid {paid}, not the order's amount.", paid=paid))
    else:
        lines.append(t(language, "At or above the product's review threshold."))
    keyboard = InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton(
                    t(language, "✅ Approve"), callback_data=f"rv:a:{item.order_id}"
                ),
                InlineKeyboardButton(
                    t(language, "↩️ Reject and refund"), callback_data=f"rv:r:{item.order_id}"
                ),
            ]
        ]
    )
    return render.Screen("\n".join(lines), keyboard)


@admin_only
async def show_queue(update: Update, context: KeyvendContext) -> None:
    """List the orders waiting for review and the open key reports, one card each: `/review`."""
    language = _language(update)
    waiting = await review.waiting(context.shop.db, limit=_MAX_LISTED)
    chat = update.effective_chat
    for item in waiting:
        card = review_card(item, language)
        await chat.send_message(card.text, parse_mode=ParseMode.HTML, reply_markup=card.keyboard)
    reported = await key_reports.send_waiting(update, context, limit=_MAX_LISTED)
    if not waiting and not reported:
        await chat.send_message(
            t(language, "Nothing waits for review: no orders, no reported keys.")
        )


@admin_button
async def decide(update: Update, context: KeyvendContext) -> None:
    """Approve (`rv:a:<order>`) or reject (`rv:r:<order>`) an order in review."""
    query = update.callback_query
    language = _language(update)
    shop = context.shop
    _, choice, raw_id = query.data.split(":")
    order_id = int(raw_id)
    admin_id = update.effective_user.id
    try:
        if choice == "a":
            shop.settled(await review.approve(shop.db, order_id, admin_id=admin_id))
            done = t(
                language, "Order #{order} approved: its keys are on their way.", order=order_id
            )
        elif await shop.reject_review(order_id, admin_id=admin_id):
            done = t(language, "Order #{order} rejected and refunded.", order=order_id)
        else:
            done = t(language, "Order #{order} rejected: the refund is under way.", order=order_id)
    except review.AlreadyDecided:
        await query.answer(
            t(language, "Order #{order} was decided already.", order=order_id), show_alert=True
        )
        return
    except (NotFound, OrderNotPayable, PaymentUnavailable) as exc:
        await query.answer(str(exc), show_alert=True)
        return
    except OutOfStock:
        await query.answer(
            t(language, "Order #{order} cannot be filled: not enough keys.", order=order_id),
            show_alert=True,
        )
        return
    await query.answer(done, show_alert=True)
    with contextlib.suppress(TelegramError):  # the card is old or gone: the decision stands
        await query.edit_message_reply_markup(None)
