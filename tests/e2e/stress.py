"""Helpers for the stress tests: many orders fast, event storms, crowds, waiting, final checks.

Shared by the storm, flash-sale and Telegram-flood tests and by the other stress tests
(crash, two instances). Everything drives or inspects the real running shop
(`tests.e2e.conftest.running`): orders are opened by `store.orders.checkout` with the app's
own Stripe gateway talking HTTP to FakeStripe, events are signed by FakeStripe and POSTed
to `/stripe/webhook`, buyers act through FakeTelegram updates, the invariants are verified
by the real `keyvend check`, and logs are captured the way `keyvend run` writes them, then
searched for every imported key. Single lookups and stocking come from `tests.e2e.helpers`;
this module adds what volume needs.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from bot import logs
from bot.settings import Settings
from bot.stripe_gateway import StripeGateway
from store import orders
from store.models import Delivery, Key, KeyStatus
from store.orders import CheckoutPolicy
from tests.e2e.conftest import Shop
from tests.e2e.helpers import rows, text, vault, wait_until
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram, SentMessage

# ---------------------------------------------------------------- keys and logs

# Every generated key ends in 20 random upper-case hex digits: that part cannot occur in a
# log by chance, and it survives any quoting or escaping a leak might apply to the key.
_CORE = 20
_KEY_CORES = re.compile(rf"(?=([0-9A-F]{{{_CORE}}}))")  # overlapping: every 20-digit window


def new_keys(count: int, tag: str) -> list[str]:
    """`count` unguessable keys, f"{tag}-<20 hex digits>"."""
    return [f"{tag}-{secrets.token_hex(_CORE // 2).upper()}" for _ in range(count)]


class CapturedLogs:
    """What the shop logged during a test, formatted as keyvend's own handler writes it."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def leaked(self, keys: Iterable[str], *, also: Iterable[str] = ()) -> set[str]:
        """The keys that appear anywhere in the captured logs (tracebacks included) or in `also`."""
        by_core = {key[-_CORE:]: key for key in keys}
        text = "\n".join([self.stream.getvalue(), *also])
        found = {match.group(1) for match in _KEY_CORES.finditer(text)}
        return {by_core[core] for core in found & by_core.keys()}

    @property
    def lines(self) -> int:
        return self.stream.getvalue().count("\n")


@contextmanager
def captured_logs(settings: Settings) -> Iterator[CapturedLogs]:
    """Capture every log record at DEBUG through the handler `keyvend run` installs.

    `bot.logs.configure` is what the command line does at start: one handler on the root
    logger, secrets scrubbed, and the third-party loggers that would echo request bodies
    capped. An in-process shop skips it, and without it the grep would search a logging
    setup no operator runs. The previous root handlers and logger levels come back after.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logger.level for name, logger in _loggers()}
    capture = CapturedLogs()
    logs.configure("DEBUG", settings.secrets(), stream=capture.stream)
    try:
        yield capture
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, logger in _loggers():
            logger.setLevel(levels.get(name, logging.NOTSET))


def _loggers() -> list[tuple[str, logging.Logger]]:
    return [(n, lg) for n, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)]


# ---------------------------------------------------------------- orders and events, fast


@dataclass(frozen=True)
class Placed:
    """An open order with its keys reserved and its Stripe Checkout Session."""

    order_id: int
    buyer_id: int
    quantity: int
    session_id: str


def stripe_gateway(shop: Shop) -> StripeGateway:
    """The gateway the app uses, built from the shop's settings as `bot.app.assemble` does."""
    return StripeGateway(
        shop.settings.stripe_secret_key.get_secret_value(),
        api_base=shop.settings.stripe_api_base,
        success_url=lambda order: f"https://t.me/{shop.telegram.bot_username}?start=paid_{order}",
    )


async def open_orders(
    shop: Shop, product_id: int, wanted: Sequence[tuple[int, int]], *, concurrency: int = 25
) -> list[Placed]:
    """Open one order per (buyer id, quantity) through the store's checkout, concurrently.

    The very call the "Pay" button makes: order and reservation in one transaction, then a
    real Checkout Session created over HTTP under the order's idempotency key. Leaving out
    the chat (two updates and two bot replies per buyer) makes hundreds of orders cost a
    few seconds; the chat path itself is what the flash-sale test drives.
    """
    gateway = stripe_gateway(shop)
    policy = CheckoutPolicy(max_unpaid=shop.settings.max_unpaid_orders, ttl=shop.settings.checkout_ttl)
    gate = asyncio.Semaphore(concurrency)

    async def one(buyer_id: int, quantity: int) -> Placed:
        async with gate:
            sale = await orders.checkout(
                shop.db, gateway, buyer_id=buyer_id, language="en", product_id=product_id,
                quantity=quantity, policy=policy,
            )
        return Placed(sale.order_id, buyer_id, quantity, shop.stripe.session_for_order(sale.order_id)["id"])

    return list(await asyncio.gather(*(one(buyer, quantity) for buyer, quantity in wanted)))


def paid(stripe: FakeStripe, session_id: str) -> dict[str, Any]:
    """The buyer pays on Stripe; the `checkout.session.completed` event Stripe then sends."""
    stripe.pay(session_id)
    return stripe.completed_event(session_id)


def expired(stripe: FakeStripe, session_id: str) -> dict[str, Any]:
    """A `checkout.session.expired` event for the session, whatever became of it.

    FakeStripe's `expired_event` refuses a paid session, and rightly: Stripe never expires
    one. But Stripe promises no order of delivery, so an expiry can arrive after the
    payment it lost to, or be applied before a payment that was still on its way when the
    reservation lapsed; this builds exactly that event.
    """
    session = {**stripe.sessions[session_id], "status": "expired", "payment_status": "unpaid", "url": None}
    return stripe.event("checkout.session.expired", session)


@dataclass(frozen=True)
class Posted:
    """How the shop answered one POST of an event."""

    event_id: str
    type: str
    order_id: int | None
    status: int
    outcome: str | None  # what the shop says the event did: "fulfilled", "duplicate", ...


async def post_concurrently(
    shop: Shop, events: Sequence[dict[str, Any]], *, in_flight: int = 50
) -> list[Posted]:
    """POST every event to `/stripe/webhook`, `in_flight` at a time, each signed as it is sent."""
    gate = asyncio.Semaphore(in_flight)

    async def one(event: dict[str, Any]) -> Posted:
        async with gate:
            response = await shop.post_event(event)
            body = await response.json() if response.status == 200 else {}
        reference = event["data"]["object"].get("client_reference_id")
        order_id = int(reference) if reference else None
        return Posted(event["id"], event["type"], order_id, response.status, body.get("outcome"))

    return list(await asyncio.gather(*(one(event) for event in events)))


# ---------------------------------------------------------------- crowds in the chat

SOLD_OUT = "Sorry, this product just sold out."


async def cards_for(
    telegram: FakeTelegram, buyers: Sequence[int], sku: str, *, timeout: float = 60
) -> dict[int, SentMessage]:
    """Every buyer follows the `/start buy_SKU` link at once; the product card each one gets."""
    since, crowd = time.monotonic(), set(buyers)
    for buyer in buyers:
        telegram.message(buyer, f"/start buy_{sku}")
    cards = await telegram.wait_for_count(
        lambda m: m.chat_id in crowd and m.time >= since and "Price:" in text(m), len(crowd), timeout=timeout
    )
    by_buyer = {card.chat_id: card for card in cards}
    assert len(by_buyer) == len(crowd), "some buyer got two cards and another none"
    return by_buyer


async def press_pay(
    telegram: FakeTelegram, cards: dict[int, SentMessage], *, timeout: float = 60
) -> dict[int, SentMessage]:
    """Every buyer presses "Pay by card" on their card at once; the bot's next message to each.

    That message is the checkout ("Order #...", with a URL button to Stripe) or the reason
    there is none, such as `SOLD_OUT`.
    """
    since = time.monotonic()
    for buyer, card in cards.items():
        telegram.press(buyer, card, card.button("by card")["callback_data"])
    answers = await telegram.wait_for_count(
        lambda m: m.chat_id in cards and m.time >= since and m.method == "sendMessage", len(cards), timeout=timeout
    )
    by_buyer = {answer.chat_id: answer for answer in answers}
    assert len(by_buyer) == len(cards), "some buyer got two answers to one press and another none"
    return by_buyer


def checkout_session(answer: SentMessage) -> str | None:
    """The Stripe session id behind a checkout message's Pay button; None for any other message."""
    if not text(answer).startswith("Order #"):
        return None
    return answer.button("Pay")["url"].rsplit("/", 1)[1]


def key_messages(telegram: FakeTelegram, chat_id: int) -> list[SentMessage]:
    """The messages to a chat that carry keys (a delivery hides each key in a spoiler)."""
    return [m for m in telegram.messages_to(chat_id) if m.method == "sendMessage" and m.spoiler_texts()]


def assert_own_keys_received(telegram: FakeTelegram, expected: dict[int, list[str]]) -> int:
    """Each buyer got their order's keys and no key reached any other chat; return the repeats.

    `expected` maps a buyer's chat to the keys of their one order (few enough for one
    message). A repeat is a key message that arrived once more; how many may is the
    caller's to assert.
    """
    owner = {key: chat for chat, keys in expected.items() for key in keys}
    for message in telegram.sent:
        for key in message.spoiler_texts():
            assert owner.get(key) == message.chat_id, f"chat {message.chat_id} got a key of chat {owner.get(key)}"
    repeats = 0
    for chat, keys in expected.items():
        received = key_messages(telegram, chat)
        assert received, f"buyer {chat} got no key message"
        for message in received:
            assert sorted(message.spoiler_texts()) == sorted(keys), f"buyer {chat} got other keys than their order's"
        repeats += len(received) - 1
    return repeats


# ---------------------------------------------------------------- waiting and looking inside


async def delivery_statuses(shop: Shop) -> Counter[str]:
    counted = await rows(shop, select(Delivery.status, func.count()).group_by(Delivery.status))
    return Counter(dict(counted))


async def deliveries_settled(shop: Shop, expected: int, *, timeout: float) -> Counter[str]:
    """Wait until at least `expected` deliveries exist and none is queued; their statuses then."""
    async def settled() -> Counter[str] | None:
        statuses = await delivery_statuses(shop)
        return statuses if statuses.total() >= expected and not statuses["queued"] else None

    return await wait_until(settled, timeout=timeout, what=f"{expected} deliveries to be sent")


async def keys_by_order(shop: Shop) -> dict[int, list[str]]:
    """Every order's sold keys, decrypted, in allocation order."""
    box = vault(shop)
    found: dict[int, list[str]] = defaultdict(list)
    query = select(Key.order_id, Key.ciphertext).where(Key.status == KeyStatus.SOLD).order_by(Key.id)
    for order_id, ciphertext in await rows(shop, query):
        found[order_id].append(box.decrypt(ciphertext))
    return dict(found)


async def metrics_text(shop: Shop) -> str:
    """`GET /metrics`, as Prometheus scrapes it."""
    async with shop.http.get(f"{shop.url}/metrics") as response:
        assert response.status == 200
        return await response.text()


async def metric(shop: Shop, sample: str) -> float:
    """One sample from `/metrics`, e.g. 'keyvend_alerts_total{kind="refund"}'; 0 if absent."""
    for line in (await metrics_text(shop)).splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return 0.0


async def assert_invariants_hold(shop: Shop) -> str:
    """The real `keyvend check` passes on the shop's database; its report."""
    result = await shop.cli("check")
    assert result.returncode == 0, f"keyvend check failed:\n{result.stdout}{result.stderr}"
    assert "all invariants hold" in result.stdout, result.stdout
    return result.stdout + result.stderr


async def operator_view(shop: Shop) -> list[str]:
    """What the shop shows anyone but a buyer: `/metrics` and every admin alert sent."""
    alerts = [text(m) for admin in shop.settings.admin_ids for m in shop.telegram.messages_to(admin)]
    return [await metrics_text(shop), *alerts]


def database_name(settings: Settings) -> str:
    """Which database a shop runs on, for the figures a test prints."""
    return "sqlite" if settings.is_sqlite else "postgresql"
