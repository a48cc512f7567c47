"""The bot's commands, listed once: `/help` shows them, and Telegram's command menu offers them.

Buyers see the buyer commands; admins see those and the admin commands, in /help and in
the menu (registered at start-up for the admins' chats only, per language). The routing of
each command is in bot/app.py `add_handlers`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from telegram import Bot, BotCommand, BotCommandScopeChat, BotCommandScopeDefault
from telegram.error import TelegramError

from handlers.i18n import DEFAULT, LANGUAGES, t

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    arguments: str  # as typed after the command, "" if none
    describe: Callable[[str], str]  # what it does, in a language


BUYER_COMMANDS = (
    Command("start", "", lambda lang: t(lang, "the catalogue")),
    Command("buy", "SKU [quantity] [code]", lambda lang: t(lang, "buy a product directly")),
    Command(
        "orders",
        "",
        lambda lang: t(lang, "your orders; open a delivered one to see its keys again"),
    ),
    Command("subscriptions", "", lambda lang: t(lang, "your subscriptions; cancel one")),
    Command("paysupport", "", lambda lang: t(lang, "help with a payment")),
    Command("terms", "", lambda lang: t(lang, "terms of sale")),
    Command("language", "", lambda lang: t(lang, "choose your language")),
    Command("help", "", lambda lang: t(lang, "the list of commands")),
)

ADMIN_COMMANDS = (
    Command(
        "restock",
        "SKU",
        lambda lang: t(lang, "then paste keys (one per line) or upload a .txt/.csv file"),
    ),
    Command("products", "", lambda lang: t(lang, "the catalogue with stock; tap one to edit it")),
    Command("newproduct", "", lambda lang: t(lang, "add a product step by step")),
    Command("stats", "[SKU]", lambda lang: t(lang, "sales and stock, with a chart")),
    Command("export", "[from] [to]", lambda lang: t(lang, "the orders as a spreadsheet")),
    Command("order", "ID", lambda lang: t(lang, "an order's card")),
    Command("find", "ORDER | BUYER | @username | KEY", lambda lang: t(lang, "find orders")),
    Command(
        "review", "", lambda lang: t(lang, "orders waiting for approval, keys reported not working")
    ),
    Command("confirm", "ORDER", lambda lang: t(lang, "ask Stripe about an order and settle it")),
    Command("refund", "ORDER", lambda lang: t(lang, "return the money and revoke the keys")),
    Command("ban", "USER [reason]", lambda lang: t(lang, "stop a buyer from buying")),
    Command("unban", "USER", lambda lang: t(lang, "let a banned buyer buy again")),
    Command("banned", "", lambda lang: t(lang, "the banned buyers")),
    Command("audit", "", lambda lang: t(lang, "the latest admin actions")),
    Command("clients", "", lambda lang: t(lang, "the API's business clients and their balances")),
    Command(
        "client",
        "add|topup|token|disable NAME ...",
        lambda lang: t(lang, "manage a business client (/client alone explains)"),
    ),
    Command(
        "coupon",
        "add|list|off ...",
        lambda lang: t(lang, "discount codes (/coupon alone explains)"),
    ),
)


def help_text(language: str, *, is_admin: bool) -> str:
    """Every command this user may use, one a line."""
    text = "\n".join(_line(c, language) for c in BUYER_COMMANDS)
    if is_admin:
        text += "\n\n" + t(language, "Admin:") + "\n"
        text += "\n".join(_line(c, language) for c in ADMIN_COMMANDS)
    return text


def _line(command: Command, language: str) -> str:
    usage = f"/{command.name} {command.arguments}".rstrip()
    return f"{usage} — {command.describe(language)}"


async def register(bot: Bot, admin_ids: Iterable[int]) -> None:
    """Offer the commands in Telegram's menu: buyers everywhere, admin ones in admins' chats.

    A few calls at start-up; if Telegram refuses, the bot works the same without a menu.
    """
    scopes = [(BotCommandScopeDefault(), BUYER_COMMANDS)]
    scopes += [(BotCommandScopeChat(a), BUYER_COMMANDS + ADMIN_COMMANDS) for a in admin_ids]
    try:
        for scope, commands in scopes:
            for language in LANGUAGES:
                await bot.set_my_commands(
                    [BotCommand(c.name, c.describe(language)) for c in commands],
                    scope=scope,
                    language_code=None if language == DEFAULT else language,
                )
    except TelegramError as exc:
        log.warning("could not register the command menu with Telegram: %s", exc.message)
