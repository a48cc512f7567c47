"""The catalogue: products, their prices and limits, and how much of each is in stock."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from store.audit import audit
from store.db import Database
from store.errors import InvalidInput, NotFound
from store.models import Allocation, Key, KeyStatus, Period, Product, ProductKind, translated
from store.money import MAX_AMOUNT, check_currency, to_minor

# Buyers see exact stock up to this many; counting further would cost a scan per view.
STOCK_DISPLAY_CAP = 1000
_SKU = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_PLACEHOLDERS = re.compile(r"\{(\w+)\}")
TEMPLATE_FIELDS = frozenset({"key", "order", "product"})
# Which languages exist is the edge's to say (handlers/i18n.py); the store keeps any code.
_LANGUAGE = re.compile(r"^[a-z]{2,8}$")


@dataclass(frozen=True, slots=True)
class ProductView:
    id: int | None  # None only in a preview of a product not created yet (preview_product)
    sku: str
    name: str
    description: str
    kind: str
    price_minor: int
    currency: str
    max_per_order: int
    max_per_buyer: int | None
    low_stock_threshold: int
    delivery_template: str
    active: bool
    stock: int  # available to buy now, capped at STOCK_DISPLAY_CAP
    translations: dict[str, dict[str, str]] = field(default_factory=dict)
    prices: dict[str, dict[str, Any]] = field(default_factory=dict)  # see Product.prices
    every: str | None = None  # a subscription product's period
    category: str = ""
    allocation: str = Allocation.OLDEST
    review_quantity: int | None = None  # orders of this many keys or more wait for review
    review_amount_minor: int | None = None  # orders worth this much or more wait for review
    auto_replace: bool = False  # a reported key is replaced without an admin, once per order

    def name_in(self, language: str) -> str:
        return translated(self.translations, language, "name", self.name)

    def description_in(self, language: str) -> str:
        return translated(self.translations, language, "description", self.description)

    def max_quantity(self) -> int:
        return max(0, min(self.stock, self.max_per_order))

    def price_for(self, provider: str, currency: str | None) -> int | None:
        return unit_price(self.price_minor, self.prices, provider, currency)


def unit_price(
    card_price: int, prices: dict[str, Any] | None, provider: str, currency: str | None
) -> int | None:
    """What one unit costs through a provider, in its currency; None if not sold through it.

    A provider without a currency of its own charges the product's price; one with its own
    (Telegram Stars) needs a price set for it in that currency.
    """
    if currency is None:
        return card_price
    entry = (prices or {}).get(provider) or {}
    return entry.get("amount") if entry.get("currency") == currency else None


def check_provider_price(amount: int) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int) or not 1 <= amount <= MAX_AMOUNT:
        raise InvalidInput(f"a price must be a whole number from 1 to {MAX_AMOUNT}")
    return amount


def _with_prices(
    prices: dict[str, Any] | None, changes: dict[str, tuple[int, str] | None]
) -> dict[str, Any]:
    """`prices` with each provider's entry set to (amount, currency), or removed for None."""
    updated = {name: dict(entry) for name, entry in (prices or {}).items()}
    for provider, price in changes.items():
        if price is None:
            updated.pop(provider, None)
        else:
            amount, currency = price
            updated[provider] = {"amount": check_provider_price(amount), "currency": currency}
    return updated


@dataclass(frozen=True, slots=True)
class ProductChanges:
    """Fields to set on a product; None leaves a field as it is."""

    name: str | None = None
    description: str | None = None
    price: str | None = None
    currency: str | None = None
    max_per_order: int | None = None
    max_per_buyer: int | None = None  # 0 removes the limit
    low_stock_threshold: int | None = None
    delivery_template: str | None = None
    active: bool | None = None
    language: str | None = None  # name/description apply to this language's translation
    # A provider's own price: (amount, currency) sets it, None takes the product off it.
    prices: dict[str, tuple[int, str] | None] | None = None
    category: str | None = None  # "" removes the category
    allocation: Allocation | None = None
    review_quantity: int | None = None  # 0 removes the threshold
    review_amount: str | None = None  # in the product's currency; "0" removes the threshold
    auto_replace: bool | None = None


def check_sku(sku: str) -> str:
    if not _SKU.match(sku):
        raise InvalidInput(
            "SKU must be 1-64 letters, digits, '-' or '_', starting with a letter or digit"
        )
    return sku


def check_category(category: str) -> str:
    category = " ".join(category.split())
    if len(category) > 64:
        raise InvalidInput("a category name is at most 64 characters")
    return category


def check_template(template: str) -> str:
    unknown = set(_PLACEHOLDERS.findall(template)) - TEMPLATE_FIELDS
    if unknown:
        raise InvalidInput(
            f"unknown placeholder {{{min(unknown)}}} in the delivery template; "
            "use {key}, {order} or {product}"
        )
    return template


async def add_product(
    db: Database,
    sku: str,
    name: str,
    price: str,
    currency: str,
    *,
    admin_id: int | None = None,
    **options: Any,
) -> ProductView:
    """Put a new product in the catalogue. The options, with their defaults, are those of
    `_new_product`; `prices` are providers' own, {name: (amount, currency)}."""
    product = _new_product(sku, name, price, currency, **options)

    async def work(session: AsyncSession) -> ProductView:
        session.add(product)
        try:
            await session.flush()
        except IntegrityError:
            raise InvalidInput(f"a product with SKU {sku} already exists") from None
        session.add(audit(admin_id, "product.add", sku))
        return _view(product, stock=0)

    return await db.write(work)


def preview_product(sku: str, name: str, price: str, currency: str, **options: Any) -> ProductView:
    """The product `add_product` would create with these (its id None), without saving it;
    InvalidInput with the reason if one of them is not valid. /newproduct shows a draft with
    it and checks each setting as the admin gives it."""
    return _view(_new_product(sku, name, price, currency, **options), stock=0)


def _new_product(
    sku: str,
    name: str,
    price: str,
    currency: str,
    *,
    description: str = "",
    kind: ProductKind = ProductKind.UNIQUE,
    max_per_order: int = 10,
    max_per_buyer: int | None = None,
    low_stock_threshold: int = 5,
    delivery_template: str = "",
    prices: dict[str, tuple[int, str]] | None = None,
    every: str | None = None,
    category: str = "",
    allocation: Allocation = Allocation.OLDEST,
) -> Product:
    check_sku(sku)
    if not name.strip():
        raise InvalidInput("product name must not be empty")
    _check_limits(max_per_order, max_per_buyer, low_stock_threshold)
    return Product(
        sku=sku,
        name=name.strip(),
        description=description,
        translations={},
        prices=_with_prices({}, dict(prices or {})),
        every=_check_period(every),
        kind=ProductKind(kind),
        price_minor=to_minor(price, currency),
        currency=check_currency(currency),
        max_per_order=max_per_order,
        max_per_buyer=max_per_buyer,
        low_stock_threshold=low_stock_threshold,
        delivery_template=check_template(delivery_template),
        active=True,
        created_at=datetime.now(UTC),
        category=check_category(category),
        allocation=Allocation(allocation),
    )


async def edit_product(
    db: Database, sku: str, changes: ProductChanges, *, admin_id: int | None = None
) -> ProductView:
    """Change a product's name, price, limits, template, category, allocation or whether it
    is on sale."""

    async def work(session: AsyncSession) -> ProductView:
        product = await _by_sku(session, sku)
        currency = check_currency(changes.currency) if changes.currency else product.currency
        if changes.currency is not None and changes.price is None:
            raise InvalidInput("changing the currency needs a price in that currency too")
        if changes.price is not None:
            product.price_minor = to_minor(changes.price, currency)
            product.currency = currency
        lang = changes.language
        if lang and not _LANGUAGE.match(lang):
            raise InvalidInput("language must be a language code such as en or zh")
        if lang and lang != "en":
            translations = {k: dict(v) for k, v in product.translations.items()}
            entry = translations.setdefault(lang, {})
            if changes.name is not None:
                entry["name"] = changes.name.strip()
            if changes.description is not None:
                entry["description"] = changes.description
            product.translations = translations
        else:
            if changes.name is not None:
                if not changes.name.strip():
                    raise InvalidInput("product name must not be empty")
                product.name = changes.name.strip()
            if changes.description is not None:
                product.description = changes.description
        if changes.max_per_order is not None:
            product.max_per_order = changes.max_per_order
        if changes.max_per_buyer is not None:
            product.max_per_buyer = changes.max_per_buyer or None
        if changes.low_stock_threshold is not None:
            product.low_stock_threshold = changes.low_stock_threshold
        _check_limits(product.max_per_order, product.max_per_buyer, product.low_stock_threshold)
        if changes.delivery_template is not None:
            product.delivery_template = check_template(changes.delivery_template)
        if changes.active is not None:
            product.active = changes.active
        if changes.prices:
            product.prices = _with_prices(product.prices, changes.prices)
        if changes.category is not None:
            product.category = check_category(changes.category)
        if changes.allocation is not None:
            product.allocation = Allocation(changes.allocation)
        if changes.review_quantity is not None:
            if changes.review_quantity < 0:
                raise InvalidInput("review quantity must not be negative")
            product.review_quantity = changes.review_quantity or None
        if changes.review_amount is not None:
            removed = changes.review_amount.strip() in ("0", "")
            product.review_amount_minor = (
                None if removed else to_minor(changes.review_amount, product.currency)
            )
        if changes.auto_replace is not None:
            product.auto_replace = changes.auto_replace
        session.add(audit(admin_id, "product.edit", sku))
        return _view(product, stock=await _stock(session, product))

    return await db.write(work)


async def list_products(db: Database, *, active_only: bool = True) -> list[ProductView]:
    """The catalogue in SKU order, with what is in stock of each."""

    async def work(session: AsyncSession) -> list[ProductView]:
        query = select(Product).order_by(Product.sku)
        if active_only:
            query = query.where(Product.active.is_(True))
        products = (await session.scalars(query)).all()
        return [_view(p, stock=await _stock(session, p)) for p in products]

    return await db.read(work)


async def get_product(
    db: Database, *, sku: str | None = None, product_id: int | None = None
) -> ProductView:
    """One product, by SKU or id, with its stock; NotFound if there is none."""

    async def work(session: AsyncSession) -> ProductView:
        if sku is not None:
            product = await _by_sku(session, sku)
        else:
            product = await session.get(Product, product_id)
            if product is None:
                raise NotFound("no such product")
        return _view(product, stock=await _stock(session, product))

    return await db.read(work)


async def _by_sku(session: AsyncSession, sku: str) -> Product:
    product = await session.scalar(select(Product).where(Product.sku == sku))
    if product is None:
        raise NotFound(f"no product with SKU {sku}")
    return product


async def _stock(session: AsyncSession, product: Product) -> int:
    available = (
        select(Key.id)
        .where(Key.product_id == product.id, Key.status == KeyStatus.AVAILABLE)
        .limit(1 if product.kind == ProductKind.SHARED else STOCK_DISPLAY_CAP)
        .subquery()
    )
    count = await session.scalar(select(func.count()).select_from(available)) or 0
    if product.kind == ProductKind.SHARED:
        return STOCK_DISPLAY_CAP if count else 0
    return count


def _check_limits(max_per_order: int, max_per_buyer: int | None, low_stock: int) -> None:
    if not 1 <= max_per_order <= 100:
        raise InvalidInput("per-order limit must be between 1 and 100")
    if max_per_buyer is not None and max_per_buyer < 1:
        raise InvalidInput("per-buyer limit must be at least 1")
    if low_stock < 0:
        raise InvalidInput("low-stock threshold must not be negative")


def _view(product: Product, *, stock: int) -> ProductView:
    return ProductView(
        id=product.id,
        sku=product.sku,
        name=product.name,
        description=product.description,
        kind=product.kind,
        price_minor=product.price_minor,
        currency=product.currency,
        max_per_order=product.max_per_order,
        max_per_buyer=product.max_per_buyer,
        low_stock_threshold=product.low_stock_threshold,
        delivery_template=product.delivery_template,
        active=product.active,
        stock=stock,
        translations=_translations(product.translations),
        prices={name: dict(entry) for name, entry in (product.prices or {}).items()},
        every=product.every,
        category=product.category,
        allocation=product.allocation,
        review_quantity=product.review_quantity,
        review_amount_minor=product.review_amount_minor,
        auto_replace=product.auto_replace,
    )


def _check_period(every: str | None) -> str | None:
    if every is None:
        return None
    if every not in set(Period):
        raise InvalidInput(f"--every must be one of {', '.join(Period)}")
    return Period(every).value


def _translations(raw: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {lang: dict(entry) for lang, entry in (raw or {}).items()}
