"""Coupons: codes a buyer enters for a discount, and how many orders may use each.

A coupon takes a whole percentage (1-99) or a fixed amount off an order's total, for every
product or for one SKU, until a date and for a number of orders, if the seller says so.
Codes ignore case (they are kept upper case). What the buyer pays:

- **Card**: the total in the product's currency, less the discount rounded down to the
  currency's smallest unit; a fixed amount counts only for products priced in its currency.
- **Telegram Stars**: the Stars total, less the same share a card buyer would save (a
  percentage as it is; a fixed amount as its share of the card total), rounded down to
  whole Stars. Either way at least one unit (one cent, one Star) is left to pay.

**Counting uses.** A checkout with a code holds one use of it, in the transaction that
opens the order: a conditional UPDATE that succeeds only while the code is active, unexpired
and `uses + held < max_uses`, so concurrent checkouts can never hold more uses than are
left and a buyer is never shown a discounted price the payment then cannot have. The hold
becomes a use in the transaction that records the order paid, guarded by the order's own
"paid once" state, so a repeated payment event never counts twice; a checkout that expires
or is cancelled unpaid gives its hold back. A payment that arrives after the shop closed
its checkout (and gave the hold back) takes a use only if one is left; if none is, the order
is still counted (it was paid at the discount) but waits in the review queue. Refunds do not
give uses back. So `uses` is the number of paid orders carrying the coupon, `held` the
number of open checkouts carrying it, and both are checked by `keyvend check`.
Subscriptions and business clients' API orders take no codes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from store.audit import audit
from store.db import Database
from store.errors import InvalidInput, NotFound, StoreError
from store.models import Coupon, Order, OrderStatus, Product
from store.money import check_currency, to_major, to_minor

# A code as stored (upper case); it fits in a button's data with a product, quantity and
# provider (Telegram allows 64 bytes).
CODE = r"[A-Z0-9][A-Z0-9_-]{2,23}"
_CODE = re.compile(rf"^{CODE}$")
MAX_USES = 1_000_000_000 - 1


class Refusal(StrEnum):
    """Why a code cannot be used for this purchase."""

    UNKNOWN = "unknown"  # no such code
    DISABLED = "disabled"
    EXPIRED = "expired"
    USED_UP = "used_up"  # every use is taken by paid orders or open checkouts
    WRONG_PRODUCT = "wrong_product"  # for another SKU, or a fixed amount in another currency
    SUBSCRIPTION = "subscription"  # subscriptions take no codes


class CouponRefused(StoreError):
    def __init__(self, reason: Refusal) -> None:
        super().__init__(f"coupon refused: {reason.value}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CouponView:
    id: int
    code: str
    percent: int | None
    off_minor: int | None
    currency: str | None
    sku: str | None
    max_uses: int | None
    valid_until: datetime | None
    active: bool
    uses: int
    held: int

    def off(self) -> str:
        """What it takes off, as the seller wrote it: "10%" or "2.00 USD"."""
        if self.percent is not None:
            return f"{self.percent}%"
        return (
            f"{to_major(self.off_minor or 0, self.currency or '')} {(self.currency or '').upper()}"
        )


def discount(coupon: CouponView | Coupon, *, total: int, card_total: int) -> int:
    """What the coupon takes off `total` (minor units, or Stars), given the order's total at
    the card price `card_total`: rounded down, and always leaving at least 1 to pay."""
    if total <= 1:
        return 0
    if coupon.percent is not None:
        off = total * coupon.percent // 100
    else:
        # A fixed amount is in the card price's currency: another currency (Stars) gets the
        # same share off. For the card price itself this is exactly `off_minor`.
        off = total * min(coupon.off_minor or 0, card_total) // max(card_total, 1)
    return min(off, total - 1)


def normalise(code: str) -> str:
    return code.strip().upper()


def check_code(code: str) -> str:
    code = normalise(code)
    if not _CODE.match(code):
        raise InvalidInput(
            "a code is 3-24 letters, digits, '-' or '_', starting with a letter or digit"
        )
    return code


def parse_until(text: str, now: datetime | None = None) -> datetime:
    """`YYYY-MM-DD` (valid through that day, UTC) or `YYYY-MM-DDTHH:MM` (UTC), in the future."""
    text = text.strip()
    try:
        if len(text) == 10:
            until = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
            until = until.replace(hour=23, minute=59, second=59)
        else:
            until = datetime.strptime(text, "%Y-%m-%dT%H:%M").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidInput(f"--until {text!r} is not a date like 2026-12-31") from None
    if until <= (now or datetime.now(UTC)):
        raise InvalidInput(f"--until {text} is in the past")
    return until


def _percent(text: str) -> int:
    try:
        value = Decimal(text.strip().removesuffix("%"))
    except InvalidOperation:
        raise InvalidInput(f"--percent {text!r} is not a number") from None
    if not value.is_finite() or value != value.to_integral_value() or not 1 <= value <= 99:
        raise InvalidInput("--percent must be a whole number from 1 to 99")
    return int(value)


# ---------------------------------------------------------------- the seller's side


async def add_coupon(
    db: Database,
    code: str,
    *,
    percent: str | None = None,
    off: str | None = None,
    currency: str | None = None,
    sku: str | None = None,
    max_uses: int | None = None,
    until: str | None = None,
    admin_id: int | None = None,
    now: datetime | None = None,
) -> CouponView:
    """A new code; InvalidInput or NotFound (the SKU) say why not. A fixed amount is in the
    SKU's currency, or `currency` for a code that fits every product priced in it."""
    code = check_code(code)
    if (percent is None) == (off is None):
        raise InvalidInput("give either --percent N or --off AMOUNT")
    if max_uses is not None and not 1 <= max_uses <= MAX_USES:
        raise InvalidInput("--uses must be at least 1")
    valid_until = parse_until(until, now) if until is not None else None
    percent_value = _percent(percent) if percent is not None else None

    async def work(session: AsyncSession) -> CouponView:
        product = None
        if sku is not None:
            product = await session.scalar(select(Product).where(Product.sku == sku))
            if product is None:
                raise NotFound(f"no product {sku}")
        off_minor, off_currency = None, None
        if off is not None:
            if product is not None:
                off_currency = product.currency
                if currency is not None and check_currency(currency) != off_currency:
                    raise InvalidInput(f"{sku} is priced in {off_currency.upper()}")
            elif currency is not None:
                off_currency = check_currency(currency)
            else:
                raise InvalidInput("--off without --sku needs --currency (usd, eur, ...)")
            off_minor = to_minor(off, off_currency)
        coupon = Coupon(
            code=code,
            percent=percent_value,
            off_minor=off_minor,
            currency=off_currency,
            product_id=product.id if product else None,
            max_uses=max_uses,
            valid_until=valid_until,
            active=True,
            uses=0,
            held=0,
            created_at=now or datetime.now(UTC),
        )
        session.add(coupon)
        try:
            async with session.begin_nested():
                await session.flush()
        except IntegrityError:
            raise InvalidInput(f"code {code} exists already") from None
        session.add(audit(admin_id, "coupon.add", f"{code} {_view(coupon, sku).off()}"))
        return _view(coupon, sku)

    return await db.write(work)


async def list_coupons(db: Database) -> list[CouponView]:
    """Every coupon, newest first."""

    async def work(session: AsyncSession) -> list[CouponView]:
        rows = await session.execute(
            select(Coupon, Product.sku)
            .outerjoin(Product, Product.id == Coupon.product_id)
            .order_by(Coupon.id.desc())
        )
        return [_view(c, sku) for c, sku in rows]

    return await db.read(work)


async def disable_coupon(db: Database, code: str, *, admin_id: int | None = None) -> CouponView:
    """No new checkout may take the code; open checkouts that hold it keep their price."""

    async def work(session: AsyncSession) -> CouponView:
        found = (
            await session.execute(
                select(Coupon, Product.sku)
                .outerjoin(Product, Product.id == Coupon.product_id)
                .where(Coupon.code == normalise(code))
            )
        ).first()
        if found is None:
            raise NotFound(f"no code {normalise(code)}")
        coupon, sku = found
        coupon.active = False
        session.add(audit(admin_id, "coupon.disable", coupon.code))
        return _view(coupon, sku)

    return await db.write(work)


# ---------------------------------------------------------------- the buyer's side


async def find_for(
    db: Database, code: str, product_id: int, *, now: datetime | None = None
) -> CouponView:
    """The coupon a buyer's code names, if it can be used on the product now (CouponRefused
    says why not). A preview for the product card: only a checkout holds a use."""

    async def work(session: AsyncSession) -> CouponView:
        product = await session.get(Product, product_id)
        if product is None:
            raise NotFound("no such product")
        coupon = await _usable(session, code, product, now or datetime.now(UTC))
        return _view(coupon, product.sku if coupon.product_id else None)

    return await db.read(work)


async def hold(session: AsyncSession, code: str, product: Product, now: datetime) -> Coupon:
    """Hold one use of the code for a checkout being opened in this transaction."""
    coupon = await _usable(session, code, product, now)
    held = await session.scalar(
        update(Coupon)
        .where(
            Coupon.id == coupon.id,
            Coupon.active.is_(True),
            or_(Coupon.valid_until.is_(None), Coupon.valid_until > now),
            or_(Coupon.max_uses.is_(None), Coupon.uses + Coupon.held < Coupon.max_uses),
        )
        .values(held=Coupon.held + 1)
        .returning(Coupon.id)
        .execution_options(synchronize_session=False)
    )
    if held is None:
        # Another transaction took the last use (or disabled the code) since it was read.
        raise CouponRefused(Refusal.USED_UP)
    return coupon


async def count_use(session: AsyncSession, order: Order) -> bool:
    """Count the coupon's use by an order being recorded paid now (call before its status
    changes). False if the order's checkout had given its hold back and no use was left: the
    use is counted all the same (the order was paid at the discount), and it needs review."""
    if order.coupon_id is None:
        return True
    if order.status == OrderStatus.PENDING:
        await _add(session, order.coupon_id, uses=1, held=-1)
        return True
    within = await session.scalar(
        update(Coupon)
        .where(
            Coupon.id == order.coupon_id,
            or_(Coupon.max_uses.is_(None), Coupon.uses + Coupon.held < Coupon.max_uses),
        )
        .values(uses=Coupon.uses + 1)
        .returning(Coupon.id)
        .execution_options(synchronize_session=False)
    )
    if within is None:
        await _add(session, order.coupon_id, uses=1, held=0)
        return False
    return True


async def release(session: AsyncSession, order: Order) -> None:
    """Give back the use an unpaid checkout held (call before its status changes)."""
    if (
        order.coupon_id is not None
        and order.status == OrderStatus.PENDING
        and order.paid_at is None
    ):
        await _add(session, order.coupon_id, uses=0, held=-1)


async def _add(session: AsyncSession, coupon_id: int, *, uses: int, held: int) -> None:
    await session.execute(
        update(Coupon)
        .where(Coupon.id == coupon_id)
        .values(uses=Coupon.uses + uses, held=Coupon.held + held)
        .execution_options(synchronize_session=False)
    )


async def _usable(session: AsyncSession, code: str, product: Product, now: datetime) -> Coupon:
    coupon = await session.scalar(select(Coupon).where(Coupon.code == normalise(code)))
    if coupon is None:
        raise CouponRefused(Refusal.UNKNOWN)
    if not coupon.active:
        raise CouponRefused(Refusal.DISABLED)
    if coupon.valid_until is not None and coupon.valid_until <= now:
        raise CouponRefused(Refusal.EXPIRED)
    if product.every is not None:
        raise CouponRefused(Refusal.SUBSCRIPTION)
    if (coupon.product_id is not None and coupon.product_id != product.id) or (
        coupon.currency is not None and coupon.currency != product.currency
    ):
        raise CouponRefused(Refusal.WRONG_PRODUCT)
    if coupon.max_uses is not None and coupon.uses + coupon.held >= coupon.max_uses:
        raise CouponRefused(Refusal.USED_UP)
    return coupon


def _view(coupon: Coupon, sku: str | None) -> CouponView:
    return CouponView(
        id=coupon.id,
        code=coupon.code,
        percent=coupon.percent,
        off_minor=coupon.off_minor,
        currency=coupon.currency,
        sku=sku,
        max_uses=coupon.max_uses,
        valid_until=coupon.valid_until,
        active=coupon.active,
        uses=coupon.uses,
        held=coupon.held,
    )
