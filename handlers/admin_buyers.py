"""Admin commands about people and accountability: /ban, /unban, /banned and /audit.

A ban stops a buyer from starting any checkout (store/orders.py refuses it); orders already
paid are left as they are. Every ban and unban writes an audit row, and /audit shows the
latest rows of every admin action.
"""

from __future__ import annotations

from telegram import Update
from telegram.constants import ParseMode

from handlers import render
from handlers.admin import admin_only
from handlers.context import KeyvendContext
from handlers.i18n import t, user_language
from store import audit, buyers
from store.errors import InvalidInput, NotFound

_e = render.html.escape


def _language(update: Update) -> str:
    return user_language(update.effective_user.language_code)


async def _reply(update: Update, text: str) -> None:
    await update.effective_chat.send_message(text, parse_mode=ParseMode.HTML)


@admin_only
async def ban(update: Update, context: KeyvendContext) -> None:
    """Stop a buyer from buying: `/ban USER [reason]` (USER is an id or @username)."""
    language = _language(update)
    if not context.args:
        await _reply(update, t(language, "Usage: /ban USER [reason] — USER is an id or @username"))
        return
    try:
        buyer_id = await buyers.resolve(context.shop.db, context.args[0])
        buyer = await buyers.ban(
            context.shop.db,
            buyer_id,
            " ".join(context.args[1:]),
            admin_id=update.effective_user.id,
        )
    except (NotFound, InvalidInput) as exc:
        await _reply(update, _e(str(exc)))
        return
    await _reply(update, t(language, "Buyer {buyer} is banned.", buyer=_who(buyer)))


@admin_only
async def unban(update: Update, context: KeyvendContext) -> None:
    """Let a banned buyer buy again: `/unban USER`."""
    language = _language(update)
    if len(context.args or []) != 1:
        await _reply(update, t(language, "Usage: /unban USER — USER is an id or @username"))
        return
    try:
        buyer_id = await buyers.resolve(context.shop.db, context.args[0])
        buyer = await buyers.unban(context.shop.db, buyer_id, admin_id=update.effective_user.id)
    except (NotFound, InvalidInput) as exc:
        await _reply(update, _e(str(exc)))
        return
    await _reply(update, t(language, "Buyer {buyer} may buy again.", buyer=_who(buyer)))


@admin_only
async def banned(update: Update, context: KeyvendContext) -> None:
    """List the banned buyers."""
    language = _language(update)
    found = await buyers.banned(context.shop.db)
    if not found:
        await _reply(update, t(language, "Nobody is banned."))
        return
    lines = [t(language, "<b>Banned buyers</b>")]
    lines += [f"{_who(b)}" + (f" — {_e(b.ban_reason)}" if b.ban_reason else "") for b in found]
    await _reply(update, "\n".join(lines))


@admin_only
async def show_audit(update: Update, context: KeyvendContext) -> None:
    """Show the latest admin actions: who, what, when."""
    language = _language(update)
    entries = await audit.recent(context.shop.db)
    if not entries:
        await _reply(update, t(language, "No admin actions yet."))
        return
    lines = [t(language, "<b>Latest admin actions</b> (UTC)")]
    lines += [
        f"{e.at:%m-%d %H:%M} · {e.admin_id if e.admin_id is not None else 'cli'} · "
        f"{_e(e.action)} {_e(e.detail)}".rstrip()
        for e in entries
    ]
    await _reply(update, "\n".join(lines))


def _who(buyer: buyers.BuyerView) -> str:
    return f"{buyer.id} (@{_e(buyer.username)})" if buyer.username else str(buyer.id)
