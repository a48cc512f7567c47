"""Admin command for discount codes: /coupon add|list|off.

`Shop.add_coupon`, `Shop.coupons` and `Shop.disable_coupon` do the work and write the audit
row with the admin's id; a mistake in the command is answered with one line and changes
nothing. How a code discounts and how its uses are counted is in store/coupons.py.
"""

from __future__ import annotations

from telegram import Update
from telegram.constants import ParseMode

from handlers import render
from handlers.admin import admin_only, flag_options
from handlers.context import KeyvendContext
from handlers.i18n import t, user_language
from store.coupons import CouponView
from store.errors import InvalidInput, NotFound

_e = render.html.escape
# `/coupon add` options: the flag as typed -> the keyword of coupons.add_coupon.
_ADD_OPTIONS = {
    "--percent": "percent",
    "--off": "off",
    "--currency": "currency",
    "--sku": "sku",
    "--uses": "max_uses",
    "--until": "until",
}


def _language(update: Update) -> str:
    return user_language(update.effective_user.language_code)


async def _reply(update: Update, text: str) -> None:
    await update.effective_chat.send_message(text, parse_mode=ParseMode.HTML)


def _usage(language: str) -> str:
    return t(
        language,
        "Usage: /coupon add CODE --percent 10 | --off 2.00 [--sku SKU] [--currency usd] "
        "[--uses N] [--until 2026-12-31], /coupon list, /coupon off CODE",
    )


@admin_only
async def coupon(update: Update, context: KeyvendContext) -> None:
    """`/coupon add|list|off ...`: make, list or disable discount codes."""
    language = _language(update)
    args = context.args or []
    action, rest = (args[0], args[1:]) if args else ("", [])
    shop = context.shop
    admin = update.effective_user.id
    try:
        if action == "add" and rest:
            made = await shop.add_coupon(
                rest[0],
                admin_id=admin,
                **flag_options(rest[1:], _ADD_OPTIONS, language, whole=("max_uses",)),
            )
            await _reply(update, t(language, "Code added: {line}", line=_line(made, language)))
        elif action == "list" and not rest:
            found = await shop.coupons()
            if not found:
                await _reply(update, t(language, "No codes yet. {usage}", usage=_usage(language)))
                return
            lines = [t(language, "<b>Codes</b>")] + [_line(c, language) for c in found]
            await _reply(update, "\n".join(lines))
        elif action == "off" and len(rest) == 1:
            off = await shop.disable_coupon(rest[0], admin_id=admin)
            await _reply(
                update,
                t(
                    language,
                    "{code} is disabled: no new checkout can use it.",
                    code=_e(off.code),
                ),
            )
        else:
            await _reply(update, _usage(language))
    except (InvalidInput, NotFound) as exc:
        await _reply(update, _e(str(exc)))


def _line(c: CouponView, language: str) -> str:
    """One code: what it takes off, where, how often it was used, until when, its state."""
    parts = [
        f"<code>{_e(c.code)}</code> −{_e(c.off())}",
        _e(c.sku) if c.sku else t(language, "any product"),
    ]
    if c.max_uses is None:
        parts.append(t(language, "{uses} used", uses=c.uses))
    else:
        parts.append(t(language, "{uses}/{max} used", uses=c.uses, max=c.max_uses))
    if c.held:
        parts.append(t(language, "{n} in open checkouts", n=c.held))
    if c.valid_until is not None:
        parts.append(t(language, "until {when} UTC", when=f"{c.valid_until:%Y-%m-%d %H:%M}"))
    parts.append(t(language, "active") if c.active else t(language, "disabled"))
    return " · ".join(parts)
