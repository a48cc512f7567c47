"""Admin handlers: restock from the chat, settling an order with Stripe.

Only users in ADMIN_IDS reach these; anyone else gets exactly the answer an unknown command
gets, and the attempt is logged. Pasted keys are deleted from the admin's chat once stored,
so the chat history does not become a second, unencrypted copy of the inventory.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from pathlib import PurePath

from telegram import Update
from telegram.constants import ParseMode
from telegram.error import TelegramError
from telegram.ext import ConversationHandler

from handlers import render
from handlers.buyer import stale_button, unknown
from handlers.context import KeyvendContext
from handlers.i18n import language_of, t
from store import catalogue, inventory
from store.errors import NotFound, OrderNotPayable, PaymentUnavailable

log = logging.getLogger(__name__)

AWAITING_KEYS = 0
MAX_UPLOAD = 20 * 1024 * 1024  # what the Bot API lets a bot download
_UPLOAD_TYPES = {".txt": False, ".csv": True}

Handler = Callable[[Update, KeyvendContext], Awaitable[object]]


def admin_only(handler: Handler) -> Handler:
    """Let admins through; answer anyone else as if the command did not exist."""

    @functools.wraps(handler)
    async def guarded(update: Update, context: KeyvendContext) -> object:
        user = update.effective_user
        if not context.shop.is_admin(user.id if user else None):
            log.warning("non-admin %s tried %s", user.id if user else None, handler.__name__)
            await unknown(update, context)
            return ConversationHandler.END
        return await handler(update, context)

    return guarded


def admin_button(handler: Handler) -> Handler:
    """Let admins' button presses through; answer anyone else's as a button that expired."""

    @functools.wraps(handler)
    async def guarded(update: Update, context: KeyvendContext) -> object:
        user = update.effective_user
        if not context.shop.is_admin(user.id if user else None):
            log.warning("non-admin %s pressed %s", user.id if user else None, handler.__name__)
            await stale_button(update, context)
            return ConversationHandler.END
        return await handler(update, context)

    return guarded


def _language(update: Update) -> str:
    return language_of(update.effective_user.language_code)


async def _reply(update: Update, text: str) -> None:
    await update.effective_chat.send_message(text, parse_mode=ParseMode.HTML)


@admin_only
async def restock(update: Update, context: KeyvendContext) -> int:
    """Start a restock: `/restock SKU`, with keys on the following lines or in the next message."""
    language = _language(update)
    if not context.args:
        await _reply(update, t(language, "Usage: /restock SKU — then send the keys, one per line."))
        return ConversationHandler.END
    sku = context.args[0]
    try:
        await catalogue.get_product(context.shop.db, sku=sku)
    except NotFound:
        await _reply(
            update,
            t(
                language,
                "There is no product {sku}. Add it with: keyvend product add",
                sku=render.html.escape(sku),
            ),
        )
        return ConversationHandler.END
    _, _, pasted = update.effective_message.text.partition("\n")
    if pasted.strip():
        await _import(update, context, sku, inventory.parse_keys(pasted), source="chat")
        return ConversationHandler.END
    context.user_data["restock_sku"] = sku
    await _reply(
        update,
        t(
            language,
            "Send the keys for {sku}: paste them one per line, or upload a .txt or .csv file. /cancel to stop.",
            sku=render.html.escape(sku),
        ),
    )
    return AWAITING_KEYS


@admin_only
async def receive_pasted_keys(update: Update, context: KeyvendContext) -> int:
    """Import keys pasted as a message."""
    sku = context.user_data.pop("restock_sku")
    await _import(
        update, context, sku, inventory.parse_keys(update.effective_message.text), source="chat"
    )
    return ConversationHandler.END


@admin_only
async def receive_key_file(update: Update, context: KeyvendContext) -> int:
    """Import keys from an uploaded .txt or .csv file."""
    language = _language(update)
    document = update.effective_message.document
    suffix = PurePath(document.file_name or "").suffix.lower()
    if suffix not in _UPLOAD_TYPES:
        await _reply(update, t(language, "Please upload a .txt or .csv file (one key per line)."))
        return AWAITING_KEYS
    if (document.file_size or 0) > MAX_UPLOAD:
        await _reply(update, t(language, "That file is over 20 MB; split it and upload the parts."))
        return AWAITING_KEYS
    sku = context.user_data.pop("restock_sku")
    file = await document.get_file()
    data = bytes(await file.download_as_bytearray())
    await _import(
        update,
        context,
        sku,
        inventory.parse_keys(data, is_csv=_UPLOAD_TYPES[suffix]),
        source="file",
    )
    return ConversationHandler.END


async def _import(
    update: Update, context: KeyvendContext, sku: str, parsed: inventory.ParsedKeys, *, source: str
) -> None:
    shop = context.shop
    language = _language(update)
    try:
        report = await shop.restock(sku, parsed, source=source, admin_id=update.effective_user.id)
    except (NotFound, inventory.InvalidInput) as exc:
        await _reply(update, render.html.escape(str(exc)))
        return
    await _forget_message(update)
    await _reply(update, render.restock_report(report, language))


async def _forget_message(update: Update) -> None:
    """Remove the admin's message that carried keys from the chat."""
    try:
        await update.effective_message.delete()
    except TelegramError:
        log.info("could not delete the admin's key message; it stays in their chat")


@admin_only
async def cancel(update: Update, context: KeyvendContext) -> int:
    """Abandon a restock."""
    context.user_data.pop("restock_sku", None)
    await _reply(update, t(_language(update), "Restock cancelled."))
    return ConversationHandler.END


@admin_only
async def confirm(update: Update, context: KeyvendContext) -> None:
    """Ask the payment provider about one order and settle it: `/confirm ORDER_ID`."""
    shop = context.shop
    language = _language(update)
    if len(context.args or []) != 1 or not context.args[0].lstrip("#").isdigit():
        await _reply(update, t(language, "Usage: /confirm ORDER_ID"))
        return
    order_id = int(context.args[0].lstrip("#"))
    try:
        result = await shop.confirm(order_id)
    except (NotFound, OrderNotPayable, PaymentUnavailable) as exc:
        await _reply(
            update,
            t(
                language,
                "Order #{order}: {reason}",
                order=order_id,
                reason=render.html.escape(str(exc)),
            ),
        )
        return
    log.info("admin %s confirmed order %s: %s", update.effective_user.id, order_id, result.outcome)
    await _reply(
        update,
        t(language, "Order #{order}: {outcome}", order=order_id, outcome=result.outcome.value),
    )


@admin_only
async def refund(update: Update, context: KeyvendContext) -> None:
    """Return an order's money through its own provider and revoke its keys: `/refund ORDER_ID`."""
    shop = context.shop
    language = _language(update)
    admin_id = update.effective_user.id
    if len(context.args or []) != 1 or not context.args[0].lstrip("#").isdigit():
        await _reply(update, t(language, "Usage: /refund ORDER_ID"))
        return
    order_id = int(context.args[0].lstrip("#"))
    try:
        result = await shop.refund(order_id, admin_id=admin_id)
    except (NotFound, OrderNotPayable, PaymentUnavailable) as exc:
        await _reply(
            update,
            t(
                language,
                "Order #{order}: {reason}",
                order=order_id,
                reason=render.html.escape(str(exc)),
            ),
        )
        return
    log.info("admin %s refunded order %s: %s", admin_id, order_id, result.outcome)
    await _reply(
        update,
        t(
            language,
            "Order #{order} is refunded; its keys are revoked and the buyer is told.",
            order=order_id,
        ),
    )
