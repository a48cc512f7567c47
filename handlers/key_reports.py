"""A key that does not work, in the chat: the buyer's report and the admins' answer.

Every key message carries a "report a problem" button per key (`kr:<order>:<key>`); the
buyer picks a reason from buttons (nothing to type, no conversation to lose on a restart)
and the report is filed by `Shop.report_key`, which checks the key is the presser's own:
forged data names a key that is not theirs and files nothing. Admins answer from the alert
or from `/review` with Replace / Refund / Reject (`kd:<r|f|j>:<report>`); the store takes
the answer once, so a second admin pressing at the same moment is told it was answered.
"""

from __future__ import annotations

import contextlib

from telegram import Update
from telegram.constants import ParseMode
from telegram.error import TelegramError

from handlers import render
from handlers.admin import admin_button
from handlers.context import KeyvendContext
from handlers.i18n import DEFAULT, t, user_language
from store import key_reports
from store.errors import InvalidInput, NotFound, OrderNotPayable, OutOfStock, PaymentUnavailable
from store.models import KeyReportStatus


def _language(update: Update) -> str:
    return user_language(update.effective_user.language_code)


async def ask_reason(update: Update, context: KeyvendContext) -> None:
    """Ask the buyer what is wrong with one of their keys (`kr:<order>:<key>`)."""
    query = update.callback_query
    _, order_id, key_id = query.data.split(":")
    await query.answer()
    screen = render.report_reasons(int(order_id), int(key_id), _language(update))
    await update.effective_chat.send_message(screen.text, reply_markup=screen.keyboard)


async def file_report(update: Update, context: KeyvendContext) -> None:
    """File the buyer's report with the reason they chose (`kr:<order>:<key>:<reason>`)."""
    query = update.callback_query
    language = _language(update)
    _, order_id, key_id, code = query.data.split(":")
    try:
        filed = await context.shop.report_key(
            int(order_id),
            int(key_id),
            buyer_id=update.effective_user.id,
            reason=render.reason_name(code, DEFAULT),
        )
    except key_reports.AlreadyDecided:
        said = t(language, "This key is reported already; the seller will answer here.")
    except (NotFound, OrderNotPayable, InvalidInput):
        await query.answer(t(language, "This key cannot be reported."), show_alert=True)
        return
    else:
        if filed.status is KeyReportStatus.REPLACED:
            said = t(language, "Sorry about that: a new key is on its way; the old one is void.")
        else:
            said = t(
                language,
                "Reported (#{report}): the seller will answer here.",
                report=filed.report_id,
            )
    await query.answer()
    with contextlib.suppress(TelegramError):  # the question is old or gone: the report stands
        await query.edit_message_text(said)


@admin_button
async def decide(update: Update, context: KeyvendContext) -> None:
    """Replace (`kd:r:<report>`), refund (`kd:f:<report>`) or reject (`kd:j:<report>`) a
    reported key."""
    query = update.callback_query
    language = _language(update)
    shop = context.shop
    _, choice, raw_id = query.data.split(":")
    report_id = int(raw_id)
    admin_id = update.effective_user.id
    try:
        if choice == "r":
            await shop.replace_key(report_id, admin_id=admin_id)
            done = t(
                language,
                "Report #{report}: the key is revoked and a new one is on its way to the buyer.",
                report=report_id,
            )
        elif choice == "f":
            if await shop.refund_reported(report_id, admin_id=admin_id):
                done = t(language, "Report #{report}: the order is refunded.", report=report_id)
            else:
                done = t(
                    language,
                    "Report #{report}: the refund is owed and will be retried.",
                    report=report_id,
                )
        else:
            await shop.reject_report(report_id, admin_id=admin_id)
            done = t(language, "Report #{report} rejected; the buyer is told.", report=report_id)
    except key_reports.AlreadyDecided:
        await query.answer(
            t(language, "Report #{report} was answered already.", report=report_id),
            show_alert=True,
        )
        return
    except OutOfStock:
        await query.answer(
            t(
                language,
                "Report #{report}: no key in stock to replace it. Restock, or refund.",
                report=report_id,
            ),
            show_alert=True,
        )
        return
    except (NotFound, OrderNotPayable, PaymentUnavailable) as exc:
        await query.answer(
            t(language, "Report #{report}: {reason}", report=report_id, reason=str(exc)),
            show_alert=True,
        )
        return
    await query.answer(done, show_alert=True)
    with contextlib.suppress(TelegramError):  # the card is old or gone: the decision stands
        await query.edit_message_reply_markup(None)


async def send_waiting(update: Update, context: KeyvendContext, *, limit: int) -> int:
    """Send a card per open report (for `/review`); how many there were."""
    language = _language(update)
    waiting = await key_reports.waiting(context.shop.db, limit=limit)
    for item in waiting:
        card = render.report_card(item, language)
        await update.effective_chat.send_message(
            card.text, parse_mode=ParseMode.HTML, reply_markup=card.keyboard
        )
    return len(waiting)
