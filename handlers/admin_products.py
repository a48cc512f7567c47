"""Admin product management in the chat: /products, a product's card with edit buttons, and
/newproduct, a conversation that creates one.

Everything here goes through the same store/catalogue.py functions as `keyvend product
add|edit`, so the chat and the command line cannot disagree on what is valid, and every
change writes the same audit row. Callback data carries only a product id and a field
name; the product is read again on every press.
"""

from __future__ import annotations

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.constants import ParseMode
from telegram.error import BadRequest
from telegram.ext import ConversationHandler

from handlers import render
from handlers.admin import admin_button, admin_only
from handlers.context import KeyvendContext
from handlers.i18n import DEFAULT, LANGUAGES, NAMES, t, user_language
from store import catalogue
from store.catalogue import ProductChanges, ProductView
from store.errors import InvalidInput, NotFound
from store.models import Allocation, ProductKind
from store.money import check_currency, to_minor

_e = render.html.escape

# Conversation states: editing one field of a product, and the steps of /newproduct.
AWAITING_VALUE = 10
NEW_SKU, NEW_NAME, NEW_PRICE, NEW_KIND, NEW_TEMPLATE = range(20, 25)

PRODUCTS = "apl"
# Fields an admin edits by typing a value; name and description also carry a language.
TYPED_FIELDS = ("name", "desc", "price", "limits", "low", "tpl", "cat", "review")


def product_data(product_id: int) -> str:
    return f"ap:{product_id}"


def edit_data(product_id: int, field: str, language: str = "") -> str:
    return f"ae:{product_id}:{field}:{language}"


def _language(update: Update) -> str:
    return user_language(update.effective_user.language_code)


async def _reply(update: Update, text: str, keyboard: InlineKeyboardMarkup | None = None) -> None:
    await update.effective_chat.send_message(text, parse_mode=ParseMode.HTML, reply_markup=keyboard)


async def _replace(update: Update, screen: render.Screen) -> None:
    """Show a screen in place of the pressed message."""
    try:
        await update.callback_query.edit_message_text(
            screen.text, parse_mode=ParseMode.HTML, reply_markup=screen.keyboard
        )
    except BadRequest as exc:
        if "not modified" not in str(exc).lower():
            raise


# ---------------------------------------------------------------- screens


def product_list(products: list[ProductView], language: str) -> render.Screen:
    if not products:
        return render.Screen(t(language, "No products yet. Create one with /newproduct."))
    rows = [
        [
            InlineKeyboardButton(
                f"{'' if p.active else '⏸ '}{p.sku} · {render.money(p.price_minor, p.currency, language)}"
                f" · {p.stock}",
                callback_data=product_data(p.id),
            )
        ]
        for p in products
    ]
    return render.Screen(
        t(language, "<b>Products</b> (SKU · price · in stock; ⏸ paused). Tap one to change it."),
        InlineKeyboardMarkup(rows),
    )


def product_card(p: ProductView, language: str) -> render.Screen:
    none = t(language, "none")
    lines = [f"<b>{_e(p.sku)}</b> — {_e(p.name)}"]
    for code in LANGUAGES:
        if code != DEFAULT and p.translations.get(code, {}).get("name"):
            lines.append(f"{NAMES[code]}: {_e(p.name_in(code))}")
    lines += [
        t(
            language,
            "Price: {price} · kind: {kind}",
            price=render.money(p.price_minor, p.currency, language),
            kind=p.kind,
        ),
        t(
            language,
            "In stock: {stock} · low-stock alert at {low}",
            stock=p.stock,
            low=p.low_stock_threshold,
        ),
        t(
            language,
            "Limits: {per_order} per order, {per_buyer} per buyer",
            per_order=p.max_per_order,
            per_buyer=p.max_per_buyer or none,
        ),
        t(language, "Category: {category}", category=_e(p.category) or none),
        t(
            language,
            "Allocation: {allocation}",
            allocation=_allocation_name(p.allocation, language),
        ),
        t(language, "Template: {template}", template=_e(p.delivery_template) or none),
        t(language, "Review from: {thresholds}", thresholds=_thresholds(p, language) or none),
        t(language, "Reported keys: replaced automatically, once per order")
        if p.auto_replace
        else t(language, "Reported keys: an admin decides"),
        t(language, "On sale") if p.active else t(language, "⏸ Paused"),
    ]

    def button(label: str, field: str, lang: str = "") -> InlineKeyboardButton:
        return InlineKeyboardButton(label, callback_data=edit_data(p.id, field, lang))

    rows = [
        [button(t(language, "Name ({language})", language=NAMES[c]), "name", c) for c in LANGUAGES],
        [
            button(t(language, "Description ({language})", language=NAMES[c]), "desc", c)
            for c in LANGUAGES
        ],
        [button(t(language, "Price"), "price"), button(t(language, "Limits"), "limits")],
        [button(t(language, "Low-stock alert"), "low"), button(t(language, "Template"), "tpl")],
        [
            button(t(language, "Category"), "cat"),
            button(
                t(
                    language,
                    "Allocation: switch to {allocation}",
                    allocation=_allocation_name(
                        Allocation.RANDOM
                        if p.allocation == Allocation.OLDEST
                        else Allocation.OLDEST,
                        language,
                    ),
                ),
                "alloc",
            ),
        ],
        [
            button(t(language, "Review thresholds"), "review"),
            button(
                t(language, "Auto-replace: turn off")
                if p.auto_replace
                else t(language, "Auto-replace: turn on"),
                "autorep",
            ),
        ],
        [
            button(
                t(language, "⏸ Pause sales") if p.active else t(language, "▶️ Resume sales"), "sale"
            )
        ],
        [InlineKeyboardButton(t(language, "« Products"), callback_data=PRODUCTS)],
    ]
    return render.Screen("\n".join(lines), InlineKeyboardMarkup(rows))


def _thresholds(p: ProductView, language: str) -> str:
    """The product's review thresholds, e.g. "4 keys / $50.00" ("" for none)."""
    parts = []
    if p.review_quantity:
        parts.append(t(language, "{n} keys", n=p.review_quantity))
    if p.review_amount_minor:
        parts.append(render.money(p.review_amount_minor, p.currency, language))
    return " / ".join(parts)


def _allocation_name(allocation: str, language: str) -> str:
    if allocation == Allocation.RANDOM:
        return t(language, "random")
    return t(language, "oldest first")


def _prompt(field: str, p: ProductView, edit_language: str, language: str) -> str:
    sku = _e(p.sku)
    match field:
        case "name":
            return t(
                language,
                "Send the new name of {sku} in {language}.",
                sku=sku,
                language=NAMES[edit_language],
            )
        case "desc":
            return t(
                language,
                "Send the new description of {sku} in {language} (- for none).",
                sku=sku,
                language=NAMES[edit_language],
            )
        case "price":
            return t(language, "Send the new price of {sku}, e.g. 9.99 or 9.99 eur.", sku=sku)
        case "limits":
            return t(
                language,
                "Send the per-order limit and, optionally, the per-buyer limit of {sku}, "
                "e.g. 10 or 10 3 (0 removes the per-buyer limit).",
                sku=sku,
            )
        case "low":
            return t(
                language, "Send the stock level at which to alert about {sku}, e.g. 5.", sku=sku
            )
        case "review":
            return t(
                language,
                "Send the review thresholds of {sku}: a number of keys and, optionally, an "
                "amount, e.g. 5 or 5 100.00; orders at or above either wait in /review "
                "(0 switches one off).",
                sku=sku,
            )
        case "tpl":
            return t(
                language,
                "Send the delivery template of {sku}; it may use {{key}}, {{order}} and "
                "{{product}} (- for the plain key).",
                sku=sku,
            )
    return t(language, "Send the category of {sku} (- for none).", sku=sku)


# ---------------------------------------------------------------- the catalogue


@admin_only
async def products(update: Update, context: KeyvendContext) -> None:
    """List every product, on sale or paused, as buttons."""
    listing = product_list(
        await catalogue.list_products(context.shop.db, active_only=False), _language(update)
    )
    await _reply(update, listing.text, listing.keyboard)


@admin_button
async def show_products(update: Update, context: KeyvendContext) -> None:
    """Replace the pressed message with the product list (`apl`)."""
    await update.callback_query.answer()
    await _replace(
        update,
        product_list(
            await catalogue.list_products(context.shop.db, active_only=False), _language(update)
        ),
    )


@admin_button
async def show_product(update: Update, context: KeyvendContext) -> None:
    """Open a product's card with its edit buttons (`ap:<id>`)."""
    language = _language(update)
    product = await _pressed_product(update, context)
    if product is not None:
        await update.callback_query.answer()
        await _replace(update, product_card(product, language))


async def _pressed_product(update: Update, context: KeyvendContext) -> ProductView | None:
    product_id = int(update.callback_query.data.split(":")[1])
    try:
        return await catalogue.get_product(context.shop.db, product_id=product_id)
    except NotFound:
        await update.callback_query.answer(
            t(_language(update), "That product no longer exists."), show_alert=True
        )
        return None


@admin_button
async def edit_field(update: Update, context: KeyvendContext) -> int:
    """Act on an edit button: flip allocation or sale at once, or ask for a typed value."""
    query = update.callback_query
    language = _language(update)
    _, _, field, edit_language = query.data.split(":")
    product = await _pressed_product(update, context)
    if product is None:
        return ConversationHandler.END
    if field in ("alloc", "sale", "autorep"):
        if field == "autorep":
            changes = ProductChanges(auto_replace=not product.auto_replace)
        elif field == "alloc":
            changes = ProductChanges(
                allocation=Allocation.RANDOM
                if product.allocation == Allocation.OLDEST
                else Allocation.OLDEST
            )
        else:
            changes = ProductChanges(active=not product.active)
        product = await catalogue.edit_product(
            context.shop.db, product.sku, changes, admin_id=update.effective_user.id
        )
        await query.answer(t(language, "Saved."))
        await _replace(update, product_card(product, language))
        return ConversationHandler.END
    if field not in TYPED_FIELDS or (field in ("name", "desc") and edit_language not in LANGUAGES):
        await query.answer(t(language, "This button has expired. Send /start."), show_alert=True)
        return ConversationHandler.END
    context.user_data["editing"] = (product.sku, field, edit_language)
    await query.answer()
    await _reply(
        update,
        _prompt(field, product, edit_language, language) + "\n" + t(language, "/cancel to stop."),
    )
    return AWAITING_VALUE


@admin_only
async def receive_value(update: Update, context: KeyvendContext) -> int:
    """Apply the value typed for the field being edited, and show the product again."""
    language = _language(update)
    sku, field, edit_language = context.user_data["editing"]
    try:
        changes = _changes(field, edit_language, update.effective_message.text.strip())
        product = await catalogue.edit_product(
            context.shop.db, sku, changes, admin_id=update.effective_user.id
        )
    except InvalidInput as exc:
        await _reply(update, _e(str(exc)) + "\n" + t(language, "Try again, or /cancel."))
        return AWAITING_VALUE
    except NotFound as exc:
        context.user_data.pop("editing", None)
        await _reply(update, _e(str(exc)))
        return ConversationHandler.END
    context.user_data.pop("editing", None)
    card = product_card(product, language)
    await _reply(update, t(language, "Saved.") + "\n\n" + card.text, card.keyboard)
    return ConversationHandler.END


def _changes(field: str, edit_language: str, value: str) -> ProductChanges:
    """The change a typed value asks for (InvalidInput with the reason if it cannot be one)."""
    cleared = "" if value == "-" else value
    match field:
        case "name":
            return ProductChanges(name=value, language=edit_language)
        case "desc":
            return ProductChanges(description=cleared, language=edit_language)
        case "price":
            price, _, currency = value.partition(" ")
            return ProductChanges(price=price, currency=currency.strip() or None)
        case "limits":
            numbers = _numbers(value, 1, 2)
            return ProductChanges(
                max_per_order=numbers[0], max_per_buyer=numbers[1] if len(numbers) > 1 else None
            )
        case "low":
            return ProductChanges(low_stock_threshold=_numbers(value, 1, 1)[0])
        case "tpl":
            return ProductChanges(delivery_template=cleared)
        case "review":
            quantity, _, amount = value.partition(" ")
            return ProductChanges(
                review_quantity=_numbers(quantity, 1, 1)[0], review_amount=amount.strip() or None
            )
    return ProductChanges(category=cleared)


def _numbers(value: str, least: int, most: int) -> list[int]:
    parts = value.split()
    if not least <= len(parts) <= most or not all(p.isdigit() for p in parts):
        raise InvalidInput(
            f"send {'one whole number' if most == 1 else 'one or two whole numbers'}"
        )
    return [int(p) for p in parts]


@admin_only
async def cancel(update: Update, context: KeyvendContext) -> int:
    """Abandon an edit or a new product."""
    context.user_data.pop("editing", None)
    context.user_data.pop("new_product", None)
    await _reply(update, t(_language(update), "Cancelled; nothing was changed."))
    return ConversationHandler.END


# ---------------------------------------------------------------- /newproduct


@admin_only
async def new_product(update: Update, context: KeyvendContext) -> int:
    """Start creating a product: ask for its SKU."""
    context.user_data["new_product"] = {}
    await _reply(
        update,
        t(
            _language(update),
            "New product. Send its SKU (letters, digits, - and _; buyers use it in /buy). "
            "/cancel to stop.",
        ),
    )
    return NEW_SKU


@admin_only
async def new_sku(update: Update, context: KeyvendContext) -> int:
    """Take the SKU if it is valid and free; ask for the name."""
    language = _language(update)
    sku = update.effective_message.text.strip()
    try:
        catalogue.check_sku(sku)
        await catalogue.get_product(context.shop.db, sku=sku)
    except InvalidInput as exc:
        await _reply(update, _e(str(exc)))
        return NEW_SKU
    except NotFound:
        context.user_data["new_product"]["sku"] = sku
        await _reply(update, t(language, "Send the product's name, as buyers will see it."))
        return NEW_NAME
    await _reply(
        update, t(language, "A product with SKU {sku} already exists; send another.", sku=_e(sku))
    )
    return NEW_SKU


@admin_only
async def new_name(update: Update, context: KeyvendContext) -> int:
    """Take the name; ask for the price."""
    name = update.effective_message.text.strip()
    context.user_data["new_product"]["name"] = name
    await _reply(update, t(_language(update), "Send the price and currency, e.g. 9.99 usd."))
    return NEW_PRICE


@admin_only
async def new_price(update: Update, context: KeyvendContext) -> int:
    """Take the price and currency if they make a valid price; ask for the kind."""
    language = _language(update)
    price, _, currency = update.effective_message.text.strip().partition(" ")
    try:
        to_minor(price, currency.strip())
    except InvalidInput as exc:
        await _reply(
            update, _e(str(exc)) + "\n" + t(language, "Send the price and currency, e.g. 9.99 usd.")
        )
        return NEW_PRICE
    context.user_data["new_product"].update(price=price, currency=check_currency(currency))
    keyboard = InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton(
                    t(language, "Unique keys (each sold once)"), callback_data="nk:unique"
                )
            ],
            [
                InlineKeyboardButton(
                    t(language, "One shared key for every buyer"), callback_data="nk:shared"
                )
            ],
        ]
    )
    await _reply(update, t(language, "What do buyers receive?"), keyboard)
    return NEW_KIND


@admin_button
async def new_kind(update: Update, context: KeyvendContext) -> int:
    """Take the kind (`nk:unique|shared`); ask for the delivery template."""
    query = update.callback_query
    kind = query.data.split(":")[1]
    if kind not in {k.value for k in ProductKind}:
        await query.answer(
            t(_language(update), "This button has expired. Send /start."), show_alert=True
        )
        return NEW_KIND
    context.user_data["new_product"]["kind"] = kind
    await query.answer()
    await _reply(
        update,
        t(
            _language(update),
            "Send the delivery template: how to redeem, with {key} where the key goes "
            "(it may also use {order} and {product}). /skip sends the plain key.",
        ),
    )
    return NEW_TEMPLATE


@admin_only
async def new_template(update: Update, context: KeyvendContext) -> int:
    """Take the template (or /skip) and create the product."""
    language = _language(update)
    text = update.effective_message.text.strip()
    template = "" if text.startswith("/skip") else text
    draft = context.user_data["new_product"]
    try:
        product = await catalogue.add_product(
            context.shop.db,
            draft["sku"],
            draft["name"],
            draft["price"],
            draft["currency"],
            kind=ProductKind(draft["kind"]),
            delivery_template=template,
            admin_id=update.effective_user.id,
        )
    except InvalidInput as exc:
        await _reply(update, _e(str(exc)) + "\n" + t(language, "Try again, or /cancel."))
        return NEW_TEMPLATE
    context.user_data.pop("new_product", None)
    card = product_card(product, language)
    await _reply(
        update,
        t(
            language,
            "Created {sku}. Add keys with /restock {sku}; it is on sale once it has stock.",
            sku=_e(product.sku),
        )
        + "\n\n"
        + card.text,
        card.keyboard,
    )
    return ConversationHandler.END
