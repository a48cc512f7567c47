"""Paid with nothing to give, refunds and disputes: the exception paths through the running app.

Every test drives the real app (`bot.app.serve`) over real HTTP: buyers through the fake
Telegram, payments through the fake Stripe and signed webhooks. It proves that a payment
arriving after its reservation was released is refunded through Stripe exactly once (with
the stable idempotency key, surviving Stripe 500s until reconciliation finishes it) or, with
`OUT_OF_STOCK_POLICY=backorder`, fulfilled at the next restock, oldest payment first; that
`charge.refunded` revokes the order's keys for good and `charge.dispute.created` flags the
order, hands the admins the reveal log and, when configured, stops the buyer buying; and that
duplicated and reordered copies of those events have the effect of one.

This module also holds what the other e2e files of this group share: `launch` (a shop with
chosen settings and a handle on its internals), the buyer's checkout, and the `afterwards`
audit that runs after every test: `keyvend check` passes on every database the test used,
and no imported key appears in any log line, CLI output or admin alert.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from bot import cli, jobs
from bot.app import Parts
from bot.settings import Settings
from store import catalogue, inventory
from store.crypto import KeyVault
from store.db import Database
from store.models import Delivery, DeliveryKind, Key, KeyStatus, Order, OrderStatus, Reveal
from tests.e2e.conftest import ADMIN, Shop, running, shop_settings
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram, SentMessage

WAIT = 30.0  # generous: the machine is shared with other test runs


# ---------------------------------------------------------------- the after-test audit


class _Capture(logging.Handler):
    """Every log record of the test, formatted with its traceback, for the key grep."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is kept raw
            self.lines.append(f"{record.name} {record.msg!r} {record.args!r}")


@dataclass
class Afterwards:
    """What a test used, so the audit after it knows what to check."""

    databases: dict[str, Settings] = field(default_factory=dict)
    keys: set[str] = field(default_factory=set)
    outputs: list[str] = field(default_factory=list)  # CLI stdout/stderr and the like

    def uses(self, settings: Settings) -> None:
        self.databases.setdefault(settings.database_url, settings)

    def imported(self, keys: Iterable[str]) -> None:
        self.keys.update(keys)


async def keyvend_check(settings: Settings) -> tuple[int, str]:
    """`keyvend check` on a shop's database: its exit code and report.

    The command's own function, run in this process: a subprocess per test would spend
    seconds starting Python for the same check (the backorder test runs the real CLI).
    """
    report = io.StringIO()
    with redirect_stdout(report):
        code = await cli.cmd_check(settings, argparse.Namespace())
    return code, report.getvalue()


# keyvend's own loggers at DEBUG (the most any operator can turn on); third-party
# libraries at INFO, the most `keyvend run` lets them log (bot/logs.py caps them).
_OWN_LOGGERS = ("bot", "handlers", "store")


@pytest.fixture(autouse=True)
async def afterwards(telegram: FakeTelegram) -> AsyncIterator[Afterwards]:
    """After the test: `keyvend check` passes and no imported key leaked anywhere."""
    audit = Afterwards()
    capture = _Capture()
    root = logging.getLogger()
    saved = {name: logging.getLogger(name).level for name in ("", *_OWN_LOGGERS)}
    root.addHandler(capture)
    root.setLevel(logging.INFO)
    for name in _OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield audit
        for settings in audit.databases.values():
            code, report = await keyvend_check(settings)
            audit.outputs.append(report)
            assert code == 0, f"keyvend check failed after the test:\n{report}"
    finally:
        root.removeHandler(capture)
        for name, level in saved.items():
            logging.getLogger(name or None).setLevel(level)
    alerts = [m.text or "" for m in telegram.messages_to(ADMIN)]
    places = {"log": capture.lines, "CLI output": audit.outputs, "admin alert": alerts}
    leaks = [(where, key) for where, texts in places.items() for key in audit.keys for text in texts if key in text]
    assert not leaks, f"imported keys leaked: {sorted(set(leaks))[:5]}"
    assert audit.keys, "the audit saw no imported key: the grep would prove nothing"


# ---------------------------------------------------------------- a shop to test


@dataclass
class Live:
    """A running shop: the test's handle on it, and the app's own parts (for its jobs)."""

    shop: Shop
    parts: Parts

    @property
    def telegram(self) -> FakeTelegram:
        return self.shop.telegram

    @property
    def stripe(self) -> FakeStripe:
        return self.shop.stripe

    @property
    def db(self) -> Database:
        return self.shop.db


Launch = Callable[..., Any]


@pytest.fixture
def launch(
    sqlite_url: str, telegram: FakeTelegram, stripe_api: FakeStripe, key_secret: str, afterwards: Afterwards,
) -> Launch:
    """`async with launch(**settings) as live:` runs the real app on this test's database."""
    @asynccontextmanager
    async def run(database_url: str | None = None, **overrides: Any) -> AsyncIterator[Live]:
        settings = shop_settings(database_url or sqlite_url, telegram, stripe_api, key_secret, **overrides)
        afterwards.uses(settings)
        async with running(settings, telegram, stripe_api) as shop:
            yield Live(shop, shop.parts)

    return run


def fresh_keys(prefix: str, n: int) -> list[str]:
    """Keys no other test (and no log line) could contain by accident."""
    return [f"{prefix}-{uuid.uuid4().hex[:16].upper()}" for _ in range(n)]


async def add_product(live: Live, afterwards: Afterwards, sku: str, keys: list[str], **options: Any) -> int:
    """A $9.99 product with these keys; low-stock alerts off so they do not crowd the admins."""
    options.setdefault("low_stock_threshold", 0)
    product = await catalogue.add_product(live.db, sku, f"{sku} game", "9.99", "usd", **options)
    if keys:
        await restock(live, afterwards, sku, keys)
    return product.id


async def restock(live: Live, afterwards: Afterwards, sku: str, keys: list[str]) -> inventory.RestockReport:
    afterwards.imported(keys)
    vault = KeyVault(live.shop.settings.key_encryption_key.get_secret_value())
    return await inventory.restock(live.db, vault, sku, inventory.parse_keys("\n".join(keys)), source="test")


# ---------------------------------------------------------------- buyers and Stripe


@dataclass(frozen=True)
class Checkout:
    buyer: int
    order_id: int
    session_id: str


def _after(messages: list[SentMessage], predicate: Callable[[SentMessage], bool]) -> Callable[[SentMessage], bool]:
    """Match only messages sent after `messages` were taken."""
    old = {id(m) for m in messages}
    return lambda m: id(m) not in old and predicate(m)


async def say(tg: FakeTelegram, user: int, text: str, predicate: Callable[[SentMessage], bool]) -> SentMessage:
    """Send `text` as `user` and wait for the first new message to them matching `predicate`."""
    before = tg.messages_to(user)
    tg.message(user, text)
    return await tg.wait_for(_after(before, lambda m: m.chat_id == user and predicate(m)), timeout=WAIT)


async def open_checkout(live: Live, buyer: int, sku: str, quantity: int = 1) -> Checkout:
    """The buyer opens the product, presses Pay and gets a Stripe Checkout link."""
    tg = live.telegram
    card = await say(tg, buyer, f"/buy {sku} {quantity}", lambda m: _has_button(m, "callback_data", "pay:"))
    before = tg.messages_to(buyer)
    tg.press(buyer, card, card.button("Pay")["callback_data"])
    started = await tg.wait_for(
        _after(before, lambda m: m.chat_id == buyer and _has_button(m, "url", "/pay/")), timeout=WAIT
    )
    session_id = started.button("Pay")["url"].rsplit("/", 1)[1]
    order_id = int(live.stripe.sessions[session_id]["client_reference_id"])
    return Checkout(buyer, order_id, session_id)


def _has_button(message: SentMessage, kind: str, contains: str) -> bool:
    return any(contains in str(b.get(kind, "")) for b in message.buttons())


async def pay(live: Live, checkout: Checkout, *, post: bool = True) -> dict:
    """The buyer pays on Stripe; Stripe's `completed` event is posted unless `post=False`."""
    live.stripe.pay(checkout.session_id)
    event = live.stripe.completed_event(checkout.session_id)
    if post:
        await post_ok(live, event)
    return event


async def post_ok(live: Live, event: dict) -> None:
    response = await live.shop.post_event(event)
    assert response.status == 200, f"{event['type']} answered {response.status}"


def expired_copy(stripe: FakeStripe, session_id: str) -> dict:
    """`checkout.session.expired` for a session still open at Stripe.

    Models the expiry crossing the payment: the event that releases the reservation comes
    first, the payment after it.
    """
    return stripe.event("checkout.session.expired", dict(stripe.sessions[session_id], status="expired", url=None))


async def key_message(live: Live, buyer: int, *, after: list[SentMessage] | None = None) -> SentMessage:
    """The next message to `buyer` that carries keys."""
    predicate = lambda m: m.chat_id == buyer and bool(m.spoiler_texts())  # noqa: E731
    if after is not None:
        predicate = _after(after, predicate)
    return await live.telegram.wait_for(predicate, timeout=WAIT)


async def text_to(live: Live, chat: int, contains: str) -> SentMessage:
    return await live.telegram.wait_for(lambda m: m.chat_id == chat and contains in (m.text or ""), timeout=WAIT)


# ---------------------------------------------------------------- the database


async def scalar(db: Database, statement: Any) -> Any:
    async def work(session):
        return await session.scalar(statement)
    return await db.read(work)


async def order_status(db: Database, order_id: int) -> str:
    return await scalar(db, select(Order.status).where(Order.id == order_id))


async def key_statuses(db: Database, order_id: int) -> list[str]:
    async def work(session):
        statuses = await session.scalars(select(Key.status).where(Key.order_id == order_id).order_by(Key.id))
        return list(statuses.all())
    return await db.read(work)


async def available(db: Database) -> int:
    return await scalar(db, select(func.count()).where(Key.status == KeyStatus.AVAILABLE))


async def deliveries_of(db: Database, order_id: int, kind: DeliveryKind) -> int:
    return await scalar(db, select(func.count()).where(Delivery.order_id == order_id, Delivery.kind == kind))


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT) -> None:
    """Poll `condition` until it holds; fail with `what` if it never does."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_for_status(db: Database, order_id: int, status: OrderStatus) -> None:
    async def reached() -> bool:
        return await order_status(db, order_id) == status
    await wait_until(reached, f"order {order_id} to be {status}")


def refund_requests(stripe: FakeStripe) -> list:
    return [r for r in stripe.requests if r.method == "POST" and r.path == "/v1/refunds"]


def refunds_of(stripe: FakeStripe, payment_intent: str) -> list[dict]:
    return [r for r in stripe.refunds.values() if r["payment_intent"] == payment_intent]


# ---------------------------------------------------------------- out of stock: refund


async def _paid_after_release(live: Live, afterwards: Afterwards, sku: str) -> tuple[Checkout, Checkout]:
    """Buyer A's reservation is released before A pays, and buyer B buys the only key meanwhile.

    Returns (A, B) with B fulfilled and A paid at Stripe, A's `completed` event not yet posted.
    """
    await add_product(live, afterwards, sku, fresh_keys(sku, 1))
    late = await open_checkout(live, 2001, sku)
    await post_ok(live, expired_copy(live.stripe, late.session_id))
    assert await order_status(live.db, late.order_id) == OrderStatus.EXPIRED
    assert await available(live.db) == 1
    winner = await open_checkout(live, 2002, sku)
    await pay(live, winner)
    await key_message(live, winner.buyer)
    assert await available(live.db) == 0
    live.stripe.pay(late.session_id)
    return late, winner


async def test_payment_after_release_with_stock_gone_is_refunded_once(launch: Launch, afterwards: Afterwards) -> None:
    async with launch() as live:
        late, winner = await _paid_after_release(live, afterwards, "SOLO")
        completed = live.stripe.completed_event(late.session_id)
        await post_ok(live, completed)

        await wait_for_status(live.db, late.order_id, OrderStatus.REFUNDED)
        intent = live.stripe.sessions[late.session_id]["payment_intent"]
        [refund] = refunds_of(live.stripe, intent)
        assert refund["amount"] == 999
        assert {r.idempotency_key for r in refund_requests(live.stripe)} == {f"refund-order-{late.order_id}"}
        await text_to(live, late.buyer, f"Order #{late.order_id} (SOLO game × 1) was refunded")
        await text_to(live, ADMIN, f"Order #{late.order_id} (SOLO) was paid with nothing left to give: refunding")
        await text_to(live, ADMIN, f"Order #{late.order_id} was refunded")

        # The refund path again, every way it can recur: the job, a crashed pass that made the
        # refund but never recorded it (the same idempotency key replays it), Stripe's copy.
        await asyncio.gather(jobs.make_refunds(live.parts.shop), jobs.reconcile(live.parts.shop))
        again = await live.parts.shop.stripe.refund(late.order_id, intent, 999)
        assert again == refund["id"]
        await post_ok(live, completed)
        await post_ok(live, live.stripe.event(completed["type"], completed["data"]["object"]))

        assert len(refunds_of(live.stripe, intent)) == 1
        assert await order_status(live.db, late.order_id) == OrderStatus.REFUNDED
        assert await deliveries_of(live.db, late.order_id, DeliveryKind.REFUNDED) == 1
        assert await key_statuses(live.db, late.order_id) == []
        assert await key_statuses(live.db, winner.order_id) == [KeyStatus.SOLD]


async def test_stripe_500s_during_refund_leave_it_pending_until_reconciliation(
    launch: Launch, afterwards: Afterwards
) -> None:
    async with launch() as live:
        late, _ = await _paid_after_release(live, afterwards, "SOLO")
        # Every attempt the SDK makes (the first and its two retries) gets a 500.
        live.stripe.fail_next(3, 500)
        await post_ok(live, live.stripe.completed_event(late.session_id))

        async def retries_spent() -> bool:
            return live.stripe.failures_pending == 0 and len(refund_requests(live.stripe)) == 3
        await wait_until(retries_spent, "the refund's three failed attempts")
        assert await order_status(live.db, late.order_id) == OrderStatus.REFUND_PENDING
        intent = live.stripe.sessions[late.session_id]["payment_intent"]
        assert refunds_of(live.stripe, intent) == []

        await jobs.reconcile(live.parts.shop)

        assert await order_status(live.db, late.order_id) == OrderStatus.REFUNDED
        assert len(refunds_of(live.stripe, intent)) == 1
        assert [r.status for r in refund_requests(live.stripe)] == [500, 500, 500, 200]
        assert {r.idempotency_key for r in refund_requests(live.stripe)} == {f"refund-order-{late.order_id}"}
        await text_to(live, late.buyer, f"Order #{late.order_id} (SOLO game × 1) was refunded")


# ---------------------------------------------------------------- out of stock: backorder


async def test_backorders_are_told_and_filled_at_restock_oldest_payment_first(
    launch: Launch, afterwards: Afterwards, tmp_path: Path
) -> None:
    async with launch(out_of_stock_policy="backorder") as live:
        await add_product(live, afterwards, "RARE", fresh_keys("RARE", 3))
        # The smaller order is opened first (lower id) but paid last: the queue is by payment.
        small = await open_checkout(live, 3001, "RARE", 1)
        big = await open_checkout(live, 3002, "RARE", 2)
        for checkout in (small, big):
            await post_ok(live, expired_copy(live.stripe, checkout.session_id))
        everything = await open_checkout(live, 3003, "RARE", 3)
        await pay(live, everything)
        await key_message(live, everything.buyer)

        await pay(live, big)
        await pay(live, small)
        for checkout in (big, small):
            assert await order_status(live.db, checkout.order_id) == OrderStatus.BACKORDERED
            await text_to(live, checkout.buyer, "will arrive here as soon as the seller restocks")
            await text_to(live, ADMIN, f"Order #{checkout.order_id} (RARE) was paid with nothing left to give")

        # One key: enough for the small order, but the bigger, older one is first in line.
        first = fresh_keys("RARE", 1)
        afterwards.imported(first)
        await say(live.telegram, ADMIN, "/restock RARE\n" + first[0], lambda m: "added 1, skipped" in (m.text or ""))
        assert await order_status(live.db, big.order_id) == OrderStatus.BACKORDERED
        assert await order_status(live.db, small.order_id) == OrderStatus.BACKORDERED
        assert await available(live.db) == 1

        # One more through the command line: the big order gets both, the small one waits.
        second = fresh_keys("RARE", 1)
        afterwards.imported(second)
        (tmp_path / "keys.txt").write_text(second[0] + "\n")
        imported = await live.shop.cli("keys", "import", "RARE", str(tmp_path / "keys.txt"))
        afterwards.outputs += [imported.stdout, imported.stderr]
        assert imported.returncode == 0, imported.stderr
        assert "filled 1 backordered orders" in imported.stdout
        delivered = await key_message(live, big.buyer)
        assert sorted(delivered.spoiler_texts()) == sorted(first + second)
        assert await order_status(live.db, small.order_id) == OrderStatus.BACKORDERED

        third = fresh_keys("RARE", 1)
        afterwards.imported(third)
        await say(live.telegram, ADMIN, "/restock RARE\n" + third[0],
                  lambda m: "Filled 1 backordered order." in (m.text or ""))
        delivered = await key_message(live, small.buyer)
        assert delivered.spoiler_texts() == third
        assert await order_status(live.db, small.order_id) == OrderStatus.FULFILLED
        assert await order_status(live.db, big.order_id) == OrderStatus.FULFILLED
        assert await available(live.db) == 0


# ---------------------------------------------------------------- refunds


async def test_refund_revokes_the_keys_for_good_and_copies_change_nothing(
    launch: Launch, afterwards: Afterwards
) -> None:
    async with launch() as live:
        first, second = fresh_keys("DUO", 2)
        await add_product(live, afterwards, "DUO", [first, second])
        buyer = await open_checkout(live, 4001, "DUO")
        completed = await pay(live, buyer)
        assert (await key_message(live, buyer.buyer)).spoiler_texts() == [first]

        # A partial refund (say, a goodwill dollar) leaves the order alone but tells the admins.
        await post_ok(live, live.stripe.charge_refunded_event(buyer.session_id, amount_refunded=100))
        await text_to(live, ADMIN, f"Order #{buyer.order_id} was partially refunded")
        assert await order_status(live.db, buyer.order_id) == OrderStatus.FULFILLED
        assert await key_statuses(live.db, buyer.order_id) == [KeyStatus.SOLD]

        refunded = live.stripe.charge_refunded_event(buyer.session_id)
        await post_ok(live, refunded)
        assert await order_status(live.db, buyer.order_id) == OrderStatus.REFUNDED
        assert await key_statuses(live.db, buyer.order_id) == [KeyStatus.REVOKED]
        await text_to(live, buyer.buyer, f"Order #{buyer.order_id} (DUO game × 1) was refunded")
        await text_to(live, ADMIN, f"Order #{buyer.order_id} was refunded; its keys are revoked")

        # Stripe's retry of the refund, a second copy of it, and a late copy of the payment.
        await post_ok(live, refunded)
        await post_ok(live, live.stripe.event("charge.refunded", refunded["data"]["object"]))
        await post_ok(live, completed)
        await post_ok(live, live.stripe.event(completed["type"], completed["data"]["object"]))
        assert await order_status(live.db, buyer.order_id) == OrderStatus.REFUNDED
        assert await key_statuses(live.db, buyer.order_id) == [KeyStatus.REVOKED]
        assert await deliveries_of(live.db, buyer.order_id, DeliveryKind.REFUNDED) == 1
        assert await deliveries_of(live.db, buyer.order_id, DeliveryKind.KEYS) == 1

        # The revoked key never comes back: the next buyer gets the other one.
        assert await available(live.db) == 1
        later = await open_checkout(live, 4002, "DUO")
        await pay(live, later)
        assert (await key_message(live, later.buyer)).spoiler_texts() == [second]


async def test_refund_arriving_before_the_payment_event_still_wins(launch: Launch, afterwards: Afterwards) -> None:
    async with launch() as live:
        await add_product(live, afterwards, "EARLY", fresh_keys("EARLY", 2))
        buyer = await open_checkout(live, 4101, "EARLY")
        completed = await pay(live, buyer, post=False)
        # Stripe does not promise order: the refund (made in the dashboard) arrives first.
        await post_ok(live, live.stripe.charge_refunded_event(buyer.session_id))
        await post_ok(live, completed)

        assert await order_status(live.db, buyer.order_id) == OrderStatus.REFUNDED
        assert KeyStatus.SOLD not in await key_statuses(live.db, buyer.order_id)
        assert await deliveries_of(live.db, buyer.order_id, DeliveryKind.KEYS) == 0


# ---------------------------------------------------------------- disputes


@pytest.mark.parametrize("blacklist", [True, False], ids=["blacklist", "no-blacklist"])
async def test_dispute_flags_the_order_with_the_reveal_log(
    launch: Launch, afterwards: Afterwards, blacklist: bool
) -> None:
    async with launch(blacklist_on_dispute=blacklist) as live:
        await add_product(live, afterwards, "DISP", fresh_keys("DISP", 3))
        buyer = await open_checkout(live, 5001, "DISP")
        await pay(live, buyer)
        first = await key_message(live, buyer.buyer)
        # The buyer shows the keys once more from "my orders": a second reveal.
        before = live.telegram.messages_to(buyer.buyer)
        live.telegram.press(buyer.buyer, first, f"k:{buyer.order_id}")
        await key_message(live, buyer.buyer, after=before)

        async def two_reveals() -> bool:
            return await scalar(live.db, select(func.count()).where(Reveal.order_id == buyer.order_id)) == 2
        await wait_until(two_reveals, "both reveals to be recorded")

        dispute = live.stripe.dispute_created_event(buyer.session_id)
        await post_ok(live, dispute)
        await post_ok(live, dispute)
        await post_ok(live, live.stripe.event(dispute["type"], dispute["data"]["object"]))
        assert await order_status(live.db, buyer.order_id) == OrderStatus.DISPUTED
        assert await key_statuses(live.db, buyer.order_id) == [KeyStatus.SOLD]

        alert = await text_to(live, ADMIN, f"Dispute on order #{buyer.order_id}")
        async def reveal_log(session):
            return (await session.execute(
                select(Reveal.revealed_at, Reveal.how).where(Reveal.order_id == buyer.order_id).order_by(Reveal.id)
            )).all()
        for at, how in await live.db.read(reveal_log):
            assert f"- {at:%Y-%m-%d %H:%M:%S} UTC, {how}" in alert.text
        assert ("blocked from buying" in alert.text) is blacklist
        # Raised once for the three copies (the counter moves as the alert is raised, before
        # the notifier sends it, so a late duplicate could not hide from this).
        assert live.parts.metrics.registry.get_sample_value("keyvend_alerts_total", {"kind": "dispute"}) == 1

        if blacklist:
            refusal = await say(live.telegram, buyer.buyer, "/buy DISP 1", lambda m: "Pay" in str(m.buttons()))
            live.telegram.press(buyer.buyer, refusal, refusal.button("Pay")["callback_data"])
            await text_to(live, buyer.buyer, "Sorry, you can't buy in this shop.")
            orders = await scalar(live.db, select(func.count()).where(Order.buyer_id == buyer.buyer))
            assert orders == 1
        else:
            again = await open_checkout(live, buyer.buyer, "DISP")
            assert await order_status(live.db, again.order_id) == OrderStatus.PENDING


async def test_dispute_arriving_before_the_payment_event_is_not_lost(launch: Launch, afterwards: Afterwards) -> None:
    async with launch(blacklist_on_dispute=True) as live:
        await add_product(live, afterwards, "LATE", fresh_keys("LATE", 2))
        buyer = await open_checkout(live, 5101, "LATE")
        completed = await pay(live, buyer, post=False)
        await post_ok(live, live.stripe.dispute_created_event(buyer.session_id))
        await post_ok(live, completed)

        assert await order_status(live.db, buyer.order_id) == OrderStatus.DISPUTED
        await text_to(live, ADMIN, f"Dispute on order #{buyer.order_id}")
