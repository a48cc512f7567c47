"""Admin commands for business clients of the HTTP API: /clients and /client add|topup|token|disable.

The same store/clients.py functions as `keyvend client ...` do the work (and write the
audit row, here with the admin's id). A new API token is shown once, in a message of its
own that is removed from the chat after KEY_MESSAGE_TTL, like a key message, so it does not
stay in the chat's history. Unlike a key message it is not sent with protect_content:
Telegram's apps then refuse to copy the text, and the admin's whole job with a token is
to copy it to the client. The removal is scheduled in memory (PTB's job queue): if the app
restarts within the TTL the message stays, and the admin can delete it by hand or issue a
new token with /client token NAME, which revokes the old one.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from telegram import Update
from telegram.constants import ParseMode
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from handlers import render
from handlers.admin import admin_only, flag_options
from handlers.context import KeyvendContext
from handlers.i18n import t, user_language
from store import clients
from store.errors import InvalidInput, NotFound

log = logging.getLogger(__name__)
_e = render.html.escape
# `/client add` options: the flag as typed -> the keyword of clients.add_client.
_ADD_OPTIONS = {
    "--balance": "balance",
    "--currency": "currency",
    "--credit": "credit",
    "--webhook": "webhook_url",
    "--email": "email",
    "--review-over": "review_over",
}


def _language(update: Update) -> str:
    return user_language(update.effective_user.language_code)


async def _reply(update: Update, text: str) -> None:
    await update.effective_chat.send_message(text, parse_mode=ParseMode.HTML)


def _usage(language: str) -> str:
    return t(
        language,
        "Usage: /client add NAME [--balance 100.00] [--currency usd] [--credit 50.00] "
        "[--webhook URL] [--email ADDR] [--review-over N], /client topup NAME AMOUNT, "
        "/client token NAME, /client disable NAME",
    )


@admin_only
async def show_clients(update: Update, context: KeyvendContext) -> None:
    """Every client with its balance, credit and whether its token works."""
    language = _language(update)
    found = await clients.list_clients(context.shop.db)
    if not found:
        await _reply(
            update, t(language, "No clients yet: /client add NAME --balance 100.00 --currency usd")
        )
        return
    lines = [t(language, "<b>Clients</b>")]
    for c in found:
        state = t(language, "disabled") if c.disabled else t(language, "active")
        lines.append(
            t(
                language,
                "{name} — balance {balance}, credit {credit} · {state}",
                name=_e(c.name),
                balance=c.money(c.balance_minor),
                credit=c.money(c.credit_minor),
                state=state,
            )
        )
    await _reply(update, "\n".join(lines))


@admin_only
async def client(update: Update, context: KeyvendContext) -> None:
    """`/client add|topup|token|disable ...`: one command, as `keyvend client` is one."""
    language = _language(update)
    args = context.args or []
    action, rest = (args[0], args[1:]) if args else ("", [])
    admin = update.effective_user.id
    db = context.shop.db
    try:
        if action == "add" and rest:
            options = flag_options(rest[1:], _ADD_OPTIONS, language, whole=("review_over",))
            new = await clients.add_client(db, rest[0], admin_id=admin, **options)
            c = new.client
            await _reply(
                update,
                t(
                    language,
                    "Client {name} added: balance {balance}, credit {credit}.",
                    name=_e(c.name),
                    balance=c.money(c.balance_minor),
                    credit=c.money(c.credit_minor),
                ),
            )
            await _send_secret(update, context, c.name, new.token, new.webhook_secret)
        elif action == "topup" and len(rest) == 2:
            c = await clients.topup(db, rest[0], rest[1], admin_id=admin)
            await _reply(
                update,
                t(
                    language,
                    "{name}: balance now {balance}.",
                    name=_e(c.name),
                    balance=c.money(c.balance_minor),
                ),
            )
        elif action == "token" and len(rest) == 1:
            token = await clients.new_token(db, rest[0], admin_id=admin)
            await _reply(
                update,
                t(
                    language,
                    "New API token for {name}: the old one no longer works.",
                    name=_e(rest[0]),
                ),
            )
            await _send_secret(update, context, rest[0], token, None)
        elif action == "disable" and len(rest) == 1:
            c = await clients.disable(db, rest[0], admin_id=admin)
            await _reply(
                update,
                t(
                    language,
                    "{name} is disabled: its token is refused from now on.",
                    name=_e(c.name),
                ),
            )
        else:
            await _reply(update, _usage(language))
    except (InvalidInput, NotFound) as exc:
        await _reply(update, _e(str(exc)))


async def _send_secret(
    update: Update,
    context: KeyvendContext,
    name: str,
    token: str,
    webhook_secret: str | None,
) -> None:
    """The token (and webhook secret) in a message that is removed after KEY_MESSAGE_TTL."""
    language = _language(update)
    ttl = context.shop.key_message_ttl
    lines = [
        t(
            language,
            "API token for {name}, shown only now. Copy it to the client: this message is "
            "deleted in {minutes} min.",
            name=_e(name),
            minutes=max(1, int(ttl.total_seconds() // 60)),
        ),
        f"<code>{token}</code>",
    ]
    if webhook_secret:
        lines += [t(language, "Webhook signing secret:"), f"<code>{webhook_secret}</code>"]
    sent = await update.effective_chat.send_message("\n".join(lines), parse_mode=ParseMode.HTML)
    _delete_later(context, sent.chat_id, sent.message_id, ttl)


def _delete_later(context: KeyvendContext, chat_id: int, message_id: int, after: timedelta) -> None:
    context.job_queue.run_once(
        _delete, after, data=(chat_id, message_id), name=f"delete-secret-{chat_id}-{message_id}"
    )


async def _delete(context: ContextTypes.DEFAULT_TYPE) -> None:
    chat_id, message_id = context.job.data
    try:
        await context.bot.delete_message(chat_id, message_id)
    except TelegramError as exc:
        # Already deleted by the admin, or too old: nothing more to do (and no token logged).
        log.info("could not delete the token message %s: %s", message_id, type(exc).__name__)
