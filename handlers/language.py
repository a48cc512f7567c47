"""The buyer's language: `/language` with a button per language, kept on the buyer's row.

A language chosen here wins over the one Telegram reports, for every later message: the
bot's answers (loaded into each update by `load_language`) and the deliveries the worker
sends (which read buyers.language).
"""

from __future__ import annotations

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update

from handlers.context import KeyvendContext
from handlers.i18n import LANGUAGES, NAMES, t, use_chosen, user_language
from store import buyers


def language_data(language: str) -> str:
    return f"lang:{language}"


async def load_language(update: Update, context: KeyvendContext) -> None:
    """Answer this update in the language its user chose, if they chose one."""
    user = update.effective_user
    if user is not None:
        use_chosen(await buyers.chosen_language(context.shop.db, user.id))


async def language(update: Update, context: KeyvendContext) -> None:
    """Offer the languages as buttons."""
    current = user_language(update.effective_user.language_code)
    rows = [
        [
            InlineKeyboardButton(
                ("✅ " if code == current else "") + NAMES[code],
                callback_data=language_data(code),
            )
        ]
        for code in LANGUAGES
    ]
    await update.effective_chat.send_message(
        t(current, "Choose your language:"), reply_markup=InlineKeyboardMarkup(rows)
    )


async def choose(update: Update, context: KeyvendContext) -> None:
    """Keep the pressed language (`lang:<code>`) for this buyer."""
    query = update.callback_query
    code = query.data.split(":", 1)[1]
    if code not in LANGUAGES:
        await query.answer(
            t(
                user_language(update.effective_user.language_code),
                "This button has expired. Send /start.",
            ),
            show_alert=True,
        )
        return
    await buyers.choose_language(context.shop.db, update.effective_user.id, code)
    use_chosen(code)
    await query.answer()
    await query.edit_message_text(t(code, "From now on I will write to you in English."))
