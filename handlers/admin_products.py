"""Admin product management in the chat: /products, a product's card with edit buttons, and
/newproduct, a conversation that asks for SKU, name and price and then shows a draft whose
buttons set every other option of `keyvend product add` before creating it.

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
from handlers.stars_invoice import PROVIDER as STARS_PROVIDER
from handlers.stars_invoice import stars_price
from store import catalogue
from store.catalogue import ProductChanges, ProductView
from store.errors import InvalidInput, NotFound
from store.models import Allocation, Period, ProductKind
from store.money import STARS, check_currency, to_minor

_e = render.html.escape

# Conversation states: editing one field of a product, and the steps of /newproduct: three
# questions, then a draft whose optional settings are buttons, and a value typed for one.
AWAITING_VALUE = 10
NEW_SKU, NEW_NAME, NEW_PRICE, NEW_OPTIONS, NEW_OPTION_VALUE = range(20, 25)

PRODUCTS = "apl"
# Fields an admin edits by typing a value; name and description also carry a language.
TYPED_FIELDS = ("name", "desc", "price", "stars", "limits", "low", "tpl", "cat", "review")
# The draft's settings set by typing (in the default language), and those one tap switches.
DRAFT_TYPED = ("desc", "stars", "limits", "low", "tpl", "cat")
DRAFT_SWITCHED = ("kind", "every", "alloc")
# A typed value's ProductChanges fields that are also add_product options of the same name.
_DRAFT_OPTIONS = (
    "description",
    "category",
    "max_per_order",
    "max_per_buyer",
    "low_stock_threshold",
    "delivery_template",
    "prices",
)


def product_data(product_id: int) -> str:
    return f"ap:{product_id}"


def edit_data(product_id: int, field: str, language: str = "") -> str:
    return f"ae:{product_id}:{field}:{language}"


def draft_data(field: str) -> str:
    return f"nd:{field}"


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
    lines = _settings(p, language) + [
        t(
            language,
            "Review from: {thresholds}",
            thresholds=_thresholds(p, language) or t(language, "none"),
        ),
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
        [button(t(language, "Price"), "price"), button(t(language, "Stars price"), "stars")],
        [button(t(language, "Limits"), "limits"), button(t(language, "Low-stock alert"), "low")],
        [
            button(t(language, "Template"), "tpl"),
            button(t(language, "Category"), "cat"),
        ],
        [
            button(
                t(
                    language,
                    "Allocation: switch to {allocation}",
                    allocation=_allocation_name(_other_allocation(p.allocation), language),
                ),
                "alloc",
            )
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


def _settings(p: ProductView, language: str) -> list[str]:
    """The lines of a product's card, or of a draft, that /newproduct can set."""
    none = t(language, "none")
    stars = p.price_for(STARS_PROVIDER, STARS)
    lines = [f"<b>{_e(p.sku)}</b> — {_e(p.name)}"]
    for code in LANGUAGES:
        if code != DEFAULT and p.translations.get(code, {}).get("name"):
            lines.append(f"{NAMES[code]}: {_e(p.name_in(code))}")
    if p.description:
        lines.append(_e(p.description))
    return lines + [
        t(
            language,
            "Price: {price} · kind: {kind}",
            price=render.money(p.price_minor, p.currency, language),
            kind=p.kind,
        ),
        t(
            language,
            "Stars price: {stars} · paid: {period}",
            stars=render.money(stars, STARS, language) if stars else none,
            period=_period_name(p.every, language),
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
    ]


def _period_name(every: str | None, language: str) -> str:
    match every:
        case Period.WEEK:
            return t(language, "every week")
        case Period.MONTH:
            return t(language, "every month")
        case Period.YEAR:
            return t(language, "every year")
    return t(language, "once")


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


def _prompt(field: str, sku: str, edit_language: str, language: str) -> str:
    sku = _e(sku)
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
        case "stars":
            return t(
                language,
                "Send the price of {sku} in Telegram Stars, e.g. 500 (0: not sold for Stars).",
                sku=sku,
            )
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
            changes = ProductChanges(allocation=_other_allocation(product.allocation))
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
        _prompt(field, product.sku, edit_language, language)
        + "\n"
        + t(language, "/cancel to stop."),
    )
    return AWAITING_VALUE


@admin_only
async def receive_value(update: Update, context: KeyvendContext) -> int:
    """Apply the value typed for the field being edited, and show the product again."""
    language = _language(update)
    sku, field, edit_language = context.user_data["editing"]
    try:
        product = await catalogue.get_product(context.shop.db, sku=sku)
        changes = _changes(field, edit_language, update.effective_message.text.strip(), product)
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


def _changes(field: str, edit_language: str, value: str, p: ProductView) -> ProductChanges:
    """The change a typed value asks for of `p` (InvalidInput with the reason if it cannot be
    one)."""
    cleared = "" if value == "-" else value
    match field:
        case "name":
            return ProductChanges(name=value, language=edit_language)
        case "desc":
            return ProductChanges(description=cleared, language=edit_language)
        case "price":
            price, _, currency = value.partition(" ")
            return ProductChanges(price=price, currency=currency.strip() or None)
        case "stars":
            return ProductChanges(prices=stars_price(_numbers(value, 1, 1)[0], every=p.every))
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
    context.user_data.pop("new_option", None)
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
    """Take the price and currency if they make a valid price; show the draft's settings."""
    language = _language(update)
    price, _, currency = update.effective_message.text.strip().partition(" ")
    try:
        to_minor(price, currency.strip())
    except InvalidInput as exc:
        await _reply(
            update, _e(str(exc)) + "\n" + t(language, "Send the price and currency, e.g. 9.99 usd.")
        )
        return NEW_PRICE
    draft = context.user_data["new_product"]
    draft.update(price=price, currency=check_currency(currency))
    screen = draft_screen(catalogue.preview_product(**draft), language)
    await _reply(update, screen.text, screen.keyboard)
    return NEW_OPTIONS


def draft_screen(p: ProductView, language: str) -> render.Screen:
    """A product not created yet, with a button for each optional setting and one to create."""

    def button(label: str, field: str) -> InlineKeyboardButton:
        return InlineKeyboardButton(label, callback_data=draft_data(field))

    rows = [
        [
            button(
                t(language, "Kind: switch to shared")
                if p.kind == ProductKind.UNIQUE
                else t(language, "Kind: switch to unique"),
                "kind",
            ),
            button(
                t(
                    language,
                    "Paid: switch to {period}",
                    period=_period_name(_next_period(p.every), language),
                ),
                "every",
            ),
        ],
        [button(t(language, "Description"), "desc"), button(t(language, "Stars price"), "stars")],
        [button(t(language, "Limits"), "limits"), button(t(language, "Low-stock alert"), "low")],
        [button(t(language, "Template"), "tpl"), button(t(language, "Category"), "cat")],
        [
            button(
                t(
                    language,
                    "Allocation: switch to {allocation}",
                    allocation=_allocation_name(_other_allocation(p.allocation), language),
                ),
                "alloc",
            )
        ],
        [button(t(language, "✅ Create {sku}", sku=p.sku), "create")],
    ]
    text = (
        t(
            language,
            "Not created yet. Every setting below has a default; change any with its button, "
            "then create it. /cancel to stop.",
        )
        + "\n\n"
        + "\n".join(_settings(p, language))
    )
    return render.Screen(text, InlineKeyboardMarkup(rows))


def _next_period(every: str | None) -> str | None:
    """The period after `every` in the cycle once, every week, month, year, once again."""
    cycle = [None, *Period]
    return cycle[(cycle.index(every) + 1) % len(cycle)]


def _other_allocation(allocation: str) -> Allocation:
    return Allocation.RANDOM if allocation == Allocation.OLDEST else Allocation.OLDEST


def _draft_options(field: str, value: str, draft: dict) -> dict:
    """The add_product options a value typed for one of the draft's settings stands for."""
    preview = catalogue.preview_product(**draft)
    changes = _changes(field, DEFAULT, value, preview)
    options = {name: getattr(changes, name) for name in _DRAFT_OPTIONS}
    options = {name: value for name, value in options.items() if value is not None}
    if options.get("max_per_buyer") == 0:
        options["max_per_buyer"] = None  # as in an edit, 0 removes the per-buyer limit
    return options


def _checked(draft: dict) -> ProductView:
    """The draft as it would be created; InvalidInput if a setting is not valid, including a
    Stars price over what its period allows."""
    preview = catalogue.preview_product(**draft)
    stars = preview.price_for(STARS_PROVIDER, STARS)
    if stars:
        stars_price(stars, every=preview.every)
    return preview


@admin_button
async def draft_button(update: Update, context: KeyvendContext) -> int:
    """Act on a draft's button (`nd:<setting>`): switch a setting, ask for a typed one, or
    create the product."""
    query = update.callback_query
    language = _language(update)
    field = query.data.split(":")[1]
    draft = context.user_data["new_product"]
    if field not in (*DRAFT_TYPED, *DRAFT_SWITCHED, "create"):
        await query.answer(t(language, "This button has expired. Send /start."), show_alert=True)
        return NEW_OPTIONS
    if field == "create":
        return await _create(update, context, draft)
    if field in DRAFT_TYPED:
        context.user_data["new_option"] = field
        await query.answer()
        await _reply(
            update,
            _prompt(field, draft["sku"], DEFAULT, language)
            + "\n"
            + t(language, "/cancel to stop."),
        )
        return NEW_OPTION_VALUE
    preview = catalogue.preview_product(**draft)
    switched = dict(draft)
    if field == "kind":
        switched["kind"] = (
            ProductKind.SHARED if preview.kind == ProductKind.UNIQUE else ProductKind.UNIQUE
        )
    elif field == "every":
        switched["every"] = _next_period(preview.every)
    else:
        switched["allocation"] = _other_allocation(preview.allocation)
    try:
        preview = _checked(switched)
    except InvalidInput as exc:
        await query.answer(str(exc), show_alert=True)
        return NEW_OPTIONS
    draft.update(switched)
    await query.answer()
    await _replace(update, draft_screen(preview, language))
    return NEW_OPTIONS


@admin_only
async def draft_value(update: Update, context: KeyvendContext) -> int:
    """Take the value typed for one of the draft's settings; show the draft again."""
    language = _language(update)
    draft = context.user_data["new_product"]
    try:
        changed = {
            **draft,
            **_draft_options(
                context.user_data["new_option"], update.effective_message.text.strip(), draft
            ),
        }
        preview = _checked(changed)
    except InvalidInput as exc:
        await _reply(update, _e(str(exc)) + "\n" + t(language, "Try again, or /cancel."))
        return NEW_OPTION_VALUE
    draft.update(changed)
    context.user_data.pop("new_option", None)
    screen = draft_screen(preview, language)
    await _reply(update, screen.text, screen.keyboard)
    return NEW_OPTIONS


async def _create(update: Update, context: KeyvendContext, draft: dict) -> int:
    """Create the drafted product and show its card."""
    language = _language(update)
    try:
        product = await catalogue.add_product(
            context.shop.db, **draft, admin_id=update.effective_user.id
        )
    except InvalidInput as exc:
        await update.callback_query.answer(str(exc), show_alert=True)
        return NEW_OPTIONS
    context.user_data.pop("new_product", None)
    await update.callback_query.answer()
    card = product_card(product, language)
    await _replace(
        update,
        render.Screen(
            t(
                language,
                "Created {sku}. Add keys with /restock {sku}; it is on sale once it has stock.",
                sku=_e(product.sku),
            )
            + "\n\n"
            + card.text,
            card.keyboard,
        ),
    )
    return ConversationHandler.END
