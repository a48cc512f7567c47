"""Coupons in the store: what a code takes off, which purchases it fits, and that its uses are
counted once per paid order, under concurrency, duplicate events and expiry.

Each concurrency test runs on SQLite and PostgreSQL and asserts on the coupons and orders
tables, then on `keyvend check`'s invariants (uses = paid orders, held = open checkouts).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from store import coupons, orders
from store.coupons import CouponRefused, CouponView, Refusal, discount
from store.crypto import KeyVault
from store.db import Database
from store.errors import InvalidInput, NotFound, PaymentUnavailable
from store.models import AuditEntry, Coupon, Order, OrderStatus
from store.orders import Event, Outcome
from store.payments import CheckoutState
from tests.store.conftest import (
    POLICY,
    REFUND,
    FakeGateway,
    invariants_hold,
    scalar,
    stocked,
)


def _coupon(percent: int | None = None, off: int | None = None) -> CouponView:
    return CouponView(1, "X", percent, off, "usd" if off else None, None, None, None, True, 0, 0)


@pytest.mark.parametrize(
    ("coupon", "total", "card_total", "off"),
    [
        (_coupon(percent=10), 1998, 1998, 199),  # 199.8 cents: rounded down
        (_coupon(off=200), 1998, 1998, 200),  # a fixed amount, exactly
        (_coupon(off=5000), 1998, 1998, 1997),  # never below one cent to pay
        (_coupon(percent=10), 15, 1998, 1),  # 1.5 Stars off 15: one Star
        (_coupon(off=200), 100, 1998, 10),  # 200 of 1998 is 10.01% of 100 Stars: 10
        (_coupon(percent=99), 1, 999, 0),  # one Star stays one Star
    ],
    ids=["percent", "fixed", "fixed-over-total", "stars-percent", "stars-fixed", "one-star"],
)
def test_a_discount_is_rounded_down_and_leaves_at_least_one_to_pay(
    coupon: CouponView, total: int, card_total: int, off: int
) -> None:
    assert discount(coupon, total=total, card_total=card_total) == off


@pytest.mark.parametrize(
    ("code", "options", "reason"),
    [
        ("SAVE10", {}, "give either --percent N or --off AMOUNT"),
        ("SAVE10", {"percent": "10", "off": "2.00"}, "give either --percent N or --off AMOUNT"),
        ("SAVE10", {"percent": "100"}, "--percent must be a whole number from 1 to 99"),
        ("SAVE10", {"percent": "12.5"}, "--percent must be a whole number from 1 to 99"),
        ("SAVE10", {"percent": "ten"}, "--percent 'ten' is not a number"),
        ("SAVE10", {"off": "2.00"}, "--off without --sku needs --currency (usd, eur, ...)"),
        ("SAVE10", {"off": "2.001", "currency": "usd"}, "USD has 2 decimal places"),
        ("SAVE10", {"percent": "10", "max_uses": 0}, "--uses must be at least 1"),
        ("SAVE10", {"percent": "10", "until": "2020-01-01"}, "--until 2020-01-01 is in the past"),
        (
            "SAVE10",
            {"percent": "10", "until": "soon"},
            "--until 'soon' is not a date like 2026-12-31",
        ),
        (
            "S",
            {"percent": "10"},
            "a code is 3-24 letters, digits, '-' or '_', starting with a letter or digit",
        ),
        (
            "save 10",
            {"percent": "10"},
            "a code is 3-24 letters, digits, '-' or '_', starting with a letter or digit",
        ),
        ("save10", {"percent": "10"}, "code SAVE10 exists already"),
    ],
    ids=[
        "no-discount",
        "two-discounts",
        "percent-100",
        "percent-fraction",
        "percent-text",
        "off-no-currency",
        "off-too-precise",
        "no-uses",
        "past-date",
        "not-a-date",
        "short-code",
        "space-in-code",
        "duplicate-any-case",
    ],
)
async def test_a_bad_coupon_is_refused_with_one_line_and_nothing_written(
    db: Database, code: str, options: dict, reason: str
) -> None:
    await coupons.add_coupon(db, "SAVE10", percent="5", admin_id=1)

    with pytest.raises(InvalidInput) as refused:
        await coupons.add_coupon(db, code, admin_id=1, **options)

    assert str(refused.value) == reason
    assert await scalar(db, select(func.count()).select_from(Coupon)) == 1
    assert await scalar(db, select(func.count()).select_from(AuditEntry)) == 1


async def test_a_coupon_for_an_unknown_sku_is_refused(db: Database) -> None:
    with pytest.raises(NotFound):
        await coupons.add_coupon(db, "SAVE10", percent="10", sku="NOPE")
    assert await scalar(db, select(func.count()).select_from(Coupon)) == 0


async def test_a_fixed_amount_for_a_sku_is_in_its_currency_and_audited(
    db: Database, vault: KeyVault
) -> None:
    await stocked(db, vault, "GAME", keys=1)

    made = await coupons.add_coupon(db, "two-off", off="2.00", sku="GAME", max_uses=3, admin_id=9)
    disabled = await coupons.disable_coupon(db, "Two-Off", admin_id=9)

    assert (made.code, made.off(), made.sku, made.max_uses) == ("TWO-OFF", "2.00 USD", "GAME", 3)
    assert not disabled.active

    async def audit(session):
        rows = await session.execute(
            select(AuditEntry.admin_id, AuditEntry.action)
            .where(AuditEntry.action.like("coupon.%"))
            .order_by(AuditEntry.id)
        )
        return [tuple(r) for r in rows]

    assert await db.read(audit) == [(9, "coupon.add"), (9, "coupon.disable")]


async def _buy(
    db: Database, gateway: FakeGateway, product_id: int, buyer: int, code: str | None, qty: int = 1
) -> orders.CheckoutResult:
    return await orders.checkout(
        db,
        gateway,
        buyer_id=buyer,
        language="en",
        product_id=product_id,
        quantity=qty,
        policy=POLICY,
        coupon=code,
    )


async def _counts(db: Database, code: str) -> tuple[int, int]:
    async def work(session):
        row = (
            await session.execute(select(Coupon.uses, Coupon.held).where(Coupon.code == code))
        ).one()
        return tuple(row)

    return await db.read(work)


async def test_a_code_charges_the_discounted_amount_and_counts_on_payment(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=5)  # 9.99 usd
    await coupons.add_coupon(db, "SAVE10", percent="10", max_uses=5)

    sale = await _buy(db, gateway, product.id, 7, "save10", qty=2)

    assert (sale.amount_minor, sale.discount_minor) == (1799, 199)
    assert gateway.requests[sale.order_id].amount_minor == 1799
    assert await _counts(db, "SAVE10") == (0, 1)
    paid = await orders.fulfil(
        db, gateway.payment(sale.order_id), REFUND, event=Event("fake", "evt_1", "paid")
    )
    assert paid.outcome is Outcome.FULFILLED  # the discounted amount passes the amount check
    assert await _counts(db, "SAVE10") == (1, 0)
    await invariants_hold(db)


async def test_paying_the_full_price_for_a_discounted_order_is_held_for_review(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=5)
    await coupons.add_coupon(db, "SAVE10", percent="10")
    sale = await _buy(db, gateway, product.id, 7, "SAVE10")

    result = await orders.fulfil(db, gateway.payment(sale.order_id, amount=999), REFUND)

    assert result.outcome is Outcome.REVIEW
    await invariants_hold(db)


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("unknown", Refusal.UNKNOWN),
        ("disabled", Refusal.DISABLED),
        ("expired", Refusal.EXPIRED),
        ("used_up", Refusal.USED_UP),
        ("other_sku", Refusal.WRONG_PRODUCT),
        ("other_currency", Refusal.WRONG_PRODUCT),
        ("subscription", Refusal.SUBSCRIPTION),
    ],
    ids=lambda v: v if isinstance(v, str) else v.value,
)
async def test_a_code_that_does_not_apply_refuses_the_checkout_and_changes_nothing(
    db: Database, vault: KeyVault, gateway: FakeGateway, setup: str, reason: Refusal
) -> None:
    product = await stocked(
        db, vault, "GAME", keys=3, every="month" if setup == "subscription" else None
    )
    await stocked(db, vault, "OTHER", keys=1)
    options: dict = {"percent": "10"}
    if setup == "other_sku":
        options["sku"] = "OTHER"
    elif setup == "other_currency":
        options = {"off": "1.00", "currency": "eur"}
    elif setup == "used_up":
        options["max_uses"] = 1
    await coupons.add_coupon(db, "CODE", **options)
    if setup == "disabled":
        await coupons.disable_coupon(db, "CODE")
    if setup == "used_up":
        await _buy(db, gateway, product.id, 99, "CODE")
    later = datetime.now(UTC) + timedelta(days=400) if setup == "expired" else None
    if setup == "expired":

        async def expire(session):
            coupon = await session.scalar(select(Coupon).where(Coupon.code == "CODE"))
            coupon.valid_until = datetime.now(UTC) + timedelta(days=1)

        await db.write(expire)
    before = await scalar(db, select(func.count()).select_from(Order))

    with pytest.raises(CouponRefused) as preview:
        await coupons.find_for(
            db, "UNKNOWN" if setup == "unknown" else "code", product.id, now=later
        )
    with pytest.raises(CouponRefused) as refused:
        await orders.checkout(
            db,
            gateway,
            buyer_id=7,
            language="en",
            product_id=product.id,
            quantity=1,
            policy=POLICY,
            coupon="UNKNOWN" if setup == "unknown" else "code",
            now=later,
        )

    assert preview.value.reason is reason and refused.value.reason is reason
    assert await scalar(db, select(func.count()).select_from(Order)) == before
    assert await _counts(db, "CODE") == ((0, 1) if setup == "used_up" else (0, 0))
    await invariants_hold(db)


async def test_twenty_buyers_at_once_on_five_uses_give_five_discounts_counted_once(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=30)
    await coupons.add_coupon(db, "FIVE", percent="20", max_uses=5)

    results = await asyncio.gather(
        *(_buy(db, gateway, product.id, 2000 + i, "FIVE") for i in range(20)),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, orders.CheckoutResult)]
    lost = [r for r in results if isinstance(r, CouponRefused)]
    assert len(won) == 5 and len(lost) == 15, results
    assert {r.reason for r in lost} == {Refusal.USED_UP}
    assert await _counts(db, "FIVE") == (0, 5)
    # Every winner pays at once, and every payment event arrives three times.
    paid = await asyncio.gather(
        *(
            orders.fulfil(
                db,
                gateway.payment(w.order_id),
                REFUND,
                event=Event("fake", f"evt_{w.order_id}", "paid"),
            )
            for w in won
            for _ in range(3)
        )
    )

    assert sorted(r.outcome for r in paid).count(Outcome.FULFILLED) == 5
    assert await _counts(db, "FIVE") == (5, 0)
    discounted = await scalar(
        db,
        select(func.count()).where(
            Order.coupon_id.is_not(None),
            Order.status == OrderStatus.FULFILLED,
            Order.amount_minor == 800,  # 9.99 less 20% (1.998, rounded down)
        ),
    )
    assert discounted == 5
    await invariants_hold(db)


async def test_an_expired_checkout_gives_its_use_back(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=10)
    await coupons.add_coupon(db, "TWO", percent="10", max_uses=2)
    first = await _buy(db, gateway, product.id, 1, "TWO")
    second = await _buy(db, gateway, product.id, 2, "TWO")
    with pytest.raises(CouponRefused):
        await _buy(db, gateway, product.id, 3, "TWO")

    await orders.close_unpaid(db, first.order_id, CheckoutState.EXPIRED)
    third = await _buy(db, gateway, product.id, 3, "TWO")
    for sale in (second, third):
        await orders.fulfil(db, gateway.payment(sale.order_id), REFUND)

    assert await _counts(db, "TWO") == (2, 0)
    with pytest.raises(CouponRefused):
        await _buy(db, gateway, product.id, 4, "TWO")
    await invariants_hold(db)


async def test_a_payment_after_expiry_takes_a_use_if_one_is_left_else_waits_for_review(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=10)
    await coupons.add_coupon(db, "ONE", percent="10", max_uses=1)
    late = await _buy(db, gateway, product.id, 1, "ONE")
    await orders.close_unpaid(db, late.order_id, CheckoutState.EXPIRED)
    taken = await _buy(db, gateway, product.id, 2, "ONE")  # the freed use goes to another buyer

    on_time = await orders.fulfil(db, gateway.payment(taken.order_id), REFUND)
    too_late = await orders.fulfil(db, gateway.payment(late.order_id), REFUND)

    assert (on_time.outcome, too_late.outcome) == (Outcome.FULFILLED, Outcome.REVIEW)
    # Both were paid at the discount, so both count; the one past the limit waits for an admin.
    assert await _counts(db, "ONE") == (2, 0)
    await invariants_hold(db)


async def test_a_failed_checkout_gives_its_use_back(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=3)
    await coupons.add_coupon(db, "ONE", percent="10", max_uses=1)
    gateway.unavailable = True
    with pytest.raises(PaymentUnavailable):
        await _buy(db, gateway, product.id, 1, "ONE")
    gateway.unavailable = False

    assert await _counts(db, "ONE") == (0, 0)
    await _buy(db, gateway, product.id, 1, "ONE")
    assert await _counts(db, "ONE") == (0, 1)
    await invariants_hold(db)
