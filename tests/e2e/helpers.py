"""Helpers for tests that drive a running shop: stock it, act as buyers and as Stripe, look inside it.

The one set of helpers for tests/e2e/, tests/handlers/ and tests/bot/: one order or five
hundred, one buyer or a crowd. Everything goes through the same doors a seller, a buyer or
Stripe use — store functions for stocking (what `keyvend product add` and `keyvend keys
import` call), FakeTelegram updates for buyers and admins, signed FakeStripe events POSTed to
`/stripe/webhook` for payments, the app's own Stripe gateway for orders opened in bulk — and
reads outcomes from the database, from what the fakes recorded and from the real `keyvend
check`. Logs are captured the way `keyvend run` writes them, and searched for every key.
"""

from __future__ import annotations

import asyncio
import html
import inspect
import io
import logging
import re
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from bot import logs
from bot.settings import Settings
from bot.stripe_gateway import StripeGateway
from store import catalogue, inventory, orders
from store.catalogue import ProductView
from store.crypto import KeyVault
from store.models import Delivery, Key, KeyStatus, Order, OrderStatus, PaymentEvent, Product, Reveal
from store.orders import CheckoutPolicy
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram, SentMessage

if TYPE_CHECKING:  # tests.e2e.conftest imports this module
    from tests.e2e.conftest import Shop

WAIT = (
    30.0  # seconds any single wait may take: generous, the machine is shared with other test runs
)
UNKNOWN_COMMAND = "Sorry, I don't know that command. /help lists what I can do."
SOLD_OUT = "Sorry, this product just sold out."


# ---------------------------------------------------------------- looking inside


async def scalar(shop: Shop, query: Any) -> Any:
    async def work(session):
        return await session.scalar(query)

    return await shop.db.read(work)


async def rows(shop: Shop, query: Any) -> list[Any]:
    async def work(session):
        return list((await session.execute(query)).all())

    return await shop.db.read(work)


@dataclass(frozen=True)
class Snapshot:
    """Row counts by status of every table a payment or an import can change."""

    orders: Counter
    keys: Counter
    payment_events: int
    deliveries: Counter
    reveals: int
    products: int


async def snapshot(shop: Shop) -> Snapshot:
    async def counted(session, column) -> Counter:
        result = await session.execute(select(column, func.count()).group_by(column))
        return Counter({value: n for value, n in result})

    async def work(session) -> Snapshot:
        return Snapshot(
            orders=await counted(session, Order.status),
            keys=await counted(session, Key.status),
            payment_events=await session.scalar(select(func.count()).select_from(PaymentEvent)),
            deliveries=Counter(
                {
                    f"{kind}:{status}": n
                    for kind, status, n in await session.execute(
                        select(Delivery.kind, Delivery.status, func.count()).group_by(
                            Delivery.kind, Delivery.status
                        )
                    )
                }
            ),
            reveals=await session.scalar(select(func.count()).select_from(Reveal)),
            products=await session.scalar(select(func.count()).select_from(Product)),
        )

    return await shop.db.read(work)


async def order_status(shop: Shop, order_id: int) -> str:
    return await scalar(shop, select(Order.status).where(Order.id == order_id))


async def key_statuses(shop: Shop, sku: str) -> Counter:
    """How many of a product's keys are in each status."""
    result = await rows(
        shop,
        select(Key.status, func.count())
        .join(Product, Product.id == Key.product_id)
        .where(Product.sku == sku)
        .group_by(Key.status),
    )
    return Counter({status: n for status, n in result})


async def order_key_statuses(shop: Shop, order_id: int) -> list[str]:
    """The status of each key an order holds, in key order."""
    return [
        status
        for (status,) in await rows(
            shop, select(Key.status).where(Key.order_id == order_id).order_by(Key.id)
        )
    ]


async def order_count(shop: Shop) -> int:
    return await scalar(shop, select(func.count()).select_from(Order))


async def delivery_statuses(shop: Shop) -> Counter[str]:
    counted = await rows(shop, select(Delivery.status, func.count()).group_by(Delivery.status))
    return Counter(dict(counted))


def vault(shop: Shop) -> KeyVault:
    return KeyVault(shop.settings.key_encryption_key.get_secret_value())


async def stored_keys(shop: Shop, sku: str) -> list[tuple[bytes, str]]:
    """Every key of a product as (ciphertext, decrypted text), in import order."""
    query = (
        select(Key.ciphertext)
        .join(Product, Product.id == Key.product_id)
        .where(Product.sku == sku)
        .order_by(Key.id)
    )
    ciphertexts = await rows(shop, query)
    box = vault(shop)
    return [(c, box.decrypt(c)) for (c,) in ciphertexts]


async def keys_by_order(shop: Shop) -> dict[int, list[str]]:
    """Every order's sold keys, decrypted, in allocation order."""
    box = vault(shop)
    found: dict[int, list[str]] = defaultdict(list)
    query = (
        select(Key.order_id, Key.ciphertext).where(Key.status == KeyStatus.SOLD).order_by(Key.id)
    )
    for order_id, ciphertext in await rows(shop, query):
        found[order_id].append(box.decrypt(ciphertext))
    return dict(found)


# ---------------------------------------------------------------- waiting


async def wait_until(
    check: Callable[[], Any] | Callable[[], Awaitable[Any]],
    *,
    timeout: float = WAIT,
    what: str = "condition",
) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(0.02)


async def wait_for_status(shop: Shop, order_id: int, status: OrderStatus) -> None:
    async def reached() -> bool:
        return await order_status(shop, order_id) == status

    await wait_until(reached, what=f"order {order_id} to be {status}")


async def outbox_empty(shop: Shop) -> Snapshot:
    """Wait until the delivery worker has recorded every queued message; the snapshot then."""

    async def done() -> Snapshot | None:
        state = await snapshot(shop)
        return None if any(k.endswith(":queued") for k in +state.deliveries) else state

    return await wait_until(done, what="the outbox to empty")


async def deliveries_settled(shop: Shop, expected: int, *, timeout: float) -> Counter[str]:
    """Wait until at least `expected` deliveries exist and none is queued; their statuses then."""

    async def settled() -> Counter[str] | None:
        statuses = await delivery_statuses(shop)
        return statuses if statuses.total() >= expected and not statuses["queued"] else None

    return await wait_until(settled, timeout=timeout, what=f"{expected} deliveries to be sent")


# ---------------------------------------------------------------- stocking

# Every generated key ends in 20 random upper-case hex digits: that part cannot occur in a
# log by chance, and it survives any quoting or escaping a leak might apply to the key.
_CORE = 20
_KEY_CORES = re.compile(rf"(?=([0-9A-F]{{{_CORE}}}))")  # overlapping: every 20-digit window


def new_keys(count: int, tag: str) -> list[str]:
    """`count` unguessable keys, f"{tag}-<20 hex digits>"."""
    return [f"{tag}-{secrets.token_hex(_CORE // 2).upper()}" for _ in range(count)]


async def stock(
    shop: Shop,
    sku: str,
    keys: int | list[str] = 3,
    *,
    name: str | None = None,
    price: str = "9.99",
    currency: str = "usd",
    **options: Any,
) -> ProductView:
    """Add a product and import keys for it (GAME-KEY-000, GAME-KEY-001, ... when given a count)."""
    product = await catalogue.add_product(
        shop.db, sku, name or f"{sku} key", price, currency, **options
    )
    lines = [f"{sku}-KEY-{i:03d}" for i in range(keys)] if isinstance(keys, int) else keys
    if lines:
        await inventory.restock(
            shop.db, vault(shop), sku, inventory.parse_keys("\n".join(lines)), source="test"
        )
    return product


# ---------------------------------------------------------------- acting in the chat


def sent_since(tg: FakeTelegram, chat_id: int, since: float) -> Callable[[SentMessage], bool]:
    """A predicate for messages to `chat_id` accepted after `since` (time.monotonic())."""
    return lambda m: m.chat_id == chat_id and m.time >= since


def text(message: SentMessage) -> str:
    return message.plain_text if message.plain_text is not None else (message.text or "")


async def reply(
    tg: FakeTelegram,
    user: int,
    command: str,
    *,
    document: tuple[str, bytes] | None = None,
    contains: str = "",
) -> SentMessage:
    """Send a message as `user` and wait for the bot's next message to them (holding `contains`)."""
    since = time.monotonic()
    tg.message(user, command, document=document)
    seen = sent_since(tg, user, since)
    return await tg.wait_for(lambda m: seen(m) and contains in text(m), timeout=WAIT)


async def text_to(shop: Shop, chat: int, contains: str) -> SentMessage:
    """The first message to `chat` holding `contains`, sent already or still to come."""
    return await shop.telegram.wait_for(
        lambda m: m.chat_id == chat and contains in text(m), timeout=WAIT
    )


async def press(
    tg: FakeTelegram, user: int, message: SentMessage | int, data: str
) -> dict[str, Any]:
    """Press a button (real or forged) as `user` and wait for the bot to answer the query."""
    query_id = tg.press(user, message, data)["callback_query"]["id"]

    def answered() -> dict[str, Any] | None:
        return next(
            (a for a in tg.callback_answers if str(a.get("callback_query_id")) == query_id), None
        )

    return await wait_until(answered, what=f"an answer to the button {data!r}")


async def open_card(shop: Shop, buyer: int, sku: str, quantity: int | None = None) -> SentMessage:
    """`/buy SKU [QTY]` and the product card it opens."""
    command = f"/buy {sku}" if quantity is None else f"/buy {sku} {quantity}"
    return await reply(shop.telegram, buyer, command, contains="Price:")


@dataclass(frozen=True)
class Checkout:
    buyer: int
    order_id: int
    session_id: str


@dataclass(frozen=True)
class PayAnswer:
    """What opening a card's pay link answered: 303 to a Stripe Checkout page, or a page
    with the one-line reason there is none."""

    status: int
    session_id: str | None
    reason: str  # the page's reason; "" for a redirect


async def open_pay_link(http: aiohttp.ClientSession, card: SentMessage) -> PayAnswer:
    """The buyer taps "Pay by card" on the card: their browser opens the link."""
    async with http.get(card.button("by card")["url"], allow_redirects=False) as response:
        page = await response.text()
    if response.status == 303:
        return PayAnswer(303, response.headers["Location"].rsplit("/", 1)[1], "")
    found = re.search(r"<p>(.*?)</p>", page)
    return PayAnswer(response.status, None, html.unescape(found.group(1)) if found else page)


async def checkout(shop: Shop, buyer: int, sku: str, quantity: int = 1) -> Checkout:
    """Open the product card and its pay link: an order with its keys reserved and a Stripe
    session."""
    card = await open_card(shop, buyer, sku, quantity)
    answer = await open_pay_link(shop.http, card)
    assert answer.session_id is not None, f"{answer.status}: {answer.reason}"
    order_id = int(shop.stripe.sessions[answer.session_id]["client_reference_id"])
    return Checkout(buyer, order_id, answer.session_id)


async def key_message(shop: Shop, buyer: int, *, since: float = 0.0) -> SentMessage:
    """The first message carrying keys (spoilers) to `buyer` accepted after `since`."""
    seen = sent_since(shop.telegram, buyer, since)
    return await shop.telegram.wait_for(lambda m: seen(m) and bool(m.spoiler_texts()), timeout=WAIT)


def key_messages(telegram: FakeTelegram, chat_id: int) -> list[SentMessage]:
    """The messages to a chat that carry keys (a delivery hides each key in a spoiler)."""
    return [
        m for m in telegram.messages_to(chat_id) if m.method == "sendMessage" and m.spoiler_texts()
    ]


async def cards_for(
    telegram: FakeTelegram, buyers: Sequence[int], sku: str, *, timeout: float = 60
) -> dict[int, SentMessage]:
    """Every buyer follows the `/start buy_SKU` link at once; the product card each one gets."""
    since, crowd = time.monotonic(), set(buyers)
    for buyer in buyers:
        telegram.message(buyer, f"/start buy_{sku}")
    cards = await telegram.wait_for_count(
        lambda m: m.chat_id in crowd and m.time >= since and "Price:" in text(m),
        len(crowd),
        timeout=timeout,
    )
    by_buyer = {card.chat_id: card for card in cards}
    assert len(by_buyer) == len(crowd), "some buyer got two cards and another none"
    return by_buyer


async def open_pay_links(
    http: aiohttp.ClientSession, cards: dict[int, SentMessage]
) -> dict[int, PayAnswer]:
    """Every buyer taps "Pay by card" on their card at once; what each one's link answered.

    The answer is a Stripe session (the link redirected to its page) or the reason there is
    none, such as `SOLD_OUT`.
    """
    answers = await asyncio.gather(*(open_pay_link(http, card) for card in cards.values()))
    return dict(zip(cards, answers, strict=True))


# ---------------------------------------------------------------- Stripe's side


def paid(stripe: FakeStripe, session_id: str, **pay_options: Any) -> dict[str, Any]:
    """The buyer pays on Stripe; the `checkout.session.completed` event Stripe then sends."""
    stripe.pay(session_id, **pay_options)
    return stripe.completed_event(session_id)


async def pay(
    shop: Shop, sale: Checkout, *, post: bool = True, **pay_options: Any
) -> dict[str, Any]:
    """The buyer pays on Stripe; Stripe's `completed` event is posted unless `post=False`."""
    event = paid(shop.stripe, sale.session_id, **pay_options)
    if post:
        await post_ok(shop, event)
    return event


async def post_ok(shop: Shop, event: dict[str, Any]) -> None:
    response = await shop.post_event(event)
    assert response.status == 200, f"{event['type']} answered {response.status}"


def expired(stripe: FakeStripe, session_id: str) -> dict[str, Any]:
    """A `checkout.session.expired` event for the session, whatever became of it.

    FakeStripe's `expired_event` refuses a paid session, and rightly: Stripe never expires
    one. But Stripe promises no order of delivery, so an expiry can arrive after the
    payment it lost to, or be applied before a payment that was still on its way when the
    reservation lapsed; this builds exactly that event.
    """
    session = {
        **stripe.sessions[session_id],
        "status": "expired",
        "payment_status": "unpaid",
        "url": None,
    }
    return stripe.event("checkout.session.expired", session)


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
    policy = CheckoutPolicy(
        max_unpaid=shop.settings.max_unpaid_orders, ttl=shop.settings.checkout_ttl
    )
    gate = asyncio.Semaphore(concurrency)

    async def one(buyer_id: int, quantity: int) -> Placed:
        async with gate:
            sale = await orders.checkout(
                shop.db,
                gateway,
                buyer_id=buyer_id,
                language="en",
                product_id=product_id,
                quantity=quantity,
                policy=policy,
            )
        return Placed(
            sale.order_id, buyer_id, quantity, shop.stripe.session_for_order(sale.order_id)["id"]
        )

    return list(await asyncio.gather(*(one(buyer, quantity) for buyer, quantity in wanted)))


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


# ---------------------------------------------------------------- raw HTTP


@dataclass(frozen=True)
class Answer:
    """An HTTP answer of the shop: status, content type and the JSON body (None if not JSON)."""

    status: int
    content_type: str
    body: Any

    def one_line_reason(self) -> str:
        """The `error` of a JSON error answer, checked to be one short line."""
        assert self.content_type == "application/json", self.content_type
        reason = self.body["error"]
        assert isinstance(reason, str) and reason.strip(), self.body
        assert "\n" not in reason and len(reason) <= 200, reason
        return reason


async def post(
    shop: Shop, path: str, body: bytes | Any, headers: dict[str, str] | None = None
) -> Answer:
    """POST raw bytes (or a streaming body) to the running shop."""
    async with shop.http.post(f"{shop.url}{path}", data=body, headers=headers or {}) as response:
        raw = await response.read()
        payload = None
        if response.content_type == "application/json" and raw:
            payload = await response.json()
        return Answer(response.status, response.content_type, payload)


async def post_in_pieces(
    shop: Shop,
    path: str,
    body: bytes,
    headers: dict[str, str],
    *,
    pieces: int = 3,
    pause: float = 0.05,
) -> int:
    """POST with a Content-Length, the body written in `pieces` with pauses between them.

    That is how a body arrives over a real network (TCP segments, a proxy in between); on
    the loopback interface a small body otherwise always arrives in one read. Returns the
    HTTP status.
    """
    host, port = shop.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = [
            f"POST {path} HTTP/1.1",
            f"Host: {host}",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        head += [
            f"{name}: {value}"
            for name, value in headers.items()
            if name.lower() != "content-length"
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        size = -(-len(body) // pieces)
        for start in range(0, len(body), size):
            writer.write(body[start : start + size])
            await writer.drain()
            await asyncio.sleep(pause)
        status_line = await asyncio.wait_for(reader.readline(), timeout=10)
        await reader.read()
        return int(status_line.split()[1])
    finally:
        writer.close()


async def health(shop: Shop) -> dict[str, Any]:
    """`GET /healthz`, as a load balancer asks it; degraded is still 200."""
    async with shop.http.get(f"{shop.url}/healthz") as response:
        assert response.status == 200, response.status
        return await response.json()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def metrics(shop: Shop) -> tuple[str, Samples]:
    """`GET /metrics`, as Prometheus scrapes it: the text, and every sample by (name, sorted labels)."""
    async with shop.http.get(f"{shop.url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        body = await response.text()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }
    return body, samples


async def metric(shop: Shop, name: str, **labels: str) -> float:
    """One sample from `/metrics`, e.g. `metric(shop, "keyvend_alerts_total", kind="refund")`; 0 if absent."""
    _, samples = await metrics(shop)
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# ---------------------------------------------------------------- final checks


def assert_own_keys_only(
    telegram: FakeTelegram, keys: dict[int, list[str]], buyers: dict[int, int]
) -> dict[int, int]:
    """Every order's keys reached its buyer's chat in one message, and no key reached any other chat.

    `keys` are the orders' keys (order id -> keys), `buyers` their buyers (order id -> chat); a
    buyer may have several orders. Returns the orders whose key message arrived more than
    once: order id -> extra copies; how many may is the caller's to assert.
    """
    owner = {key: order for order, order_keys in keys.items() for key in order_keys}
    assert len(owner) == sum(len(k) for k in keys.values()), "a key belongs to two orders"
    received: Counter[int] = Counter()
    for message in telegram.sent:
        spoilers = message.spoiler_texts()
        if not spoilers:
            continue
        order = owner.get(spoilers[0])
        assert order is not None and buyers[order] == message.chat_id, (
            f"chat {message.chat_id} received a key that is not from one of its orders"
        )
        assert sorted(spoilers) == sorted(keys[order]), (
            f"chat {message.chat_id} got other keys than its order's"
        )
        received[order] += 1
    missing = [order for order in keys if not received[order]]
    assert not missing, (
        f"{len(missing)} orders' keys never reached their buyer, e.g. order {missing[0]}"
    )
    return {order: copies - 1 for order, copies in received.items() if copies > 1}


async def assert_invariants_hold(shop: Shop) -> str:
    """The real `keyvend check` passes on the shop's database; its report."""
    result = await shop.cli("check")
    assert result.returncode == 0, f"keyvend check failed:\n{result.stdout}{result.stderr}"
    assert "all invariants hold" in result.stdout, result.stdout
    return result.stdout + result.stderr


async def operator_view(shop: Shop) -> list[str]:
    """What the shop shows anyone but a buyer: `/metrics` and every admin alert sent."""
    alerts = [
        text(m) for admin in shop.settings.admin_ids for m in shop.telegram.messages_to(admin)
    ]
    body, _ = await metrics(shop)
    return [body, *alerts]


def database_name(settings: Settings) -> str:
    """Which database a shop runs on, for the figures a test prints."""
    return "sqlite" if settings.is_sqlite else "postgresql"


# ---------------------------------------------------------------- logs


class CapturedLogs:
    """What the shop logged during a test, formatted as keyvend's own handler writes it."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def leaked(self, keys: Iterable[str], *, also: Iterable[str] = ()) -> set[str]:
        """The keys that appear anywhere in the captured logs (tracebacks included) or in `also`.

        The keys must come from `new_keys`: it is their random core that is searched for.
        """
        by_core = {key[-_CORE:]: key for key in keys}
        assert all(_KEY_CORES.match(core) for core in by_core), "a key not made by new_keys()"
        found = {
            match.group(1)
            for match in _KEY_CORES.finditer("\n".join([self.stream.getvalue(), *also]))
        }
        return {by_core[core] for core in found & by_core.keys()}


@contextmanager
def captured_logs(settings: Settings) -> Iterator[CapturedLogs]:
    """Capture every log record at DEBUG through the handler `keyvend run` installs.

    `bot.logs.configure` is what the command line does at start: one handler on the root
    logger, secrets scrubbed, and the third-party loggers that would echo request bodies
    capped. An in-process shop skips it, and without it the grep would search a logging
    setup no operator runs. The logger levels come back after.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logger.level for name, logger in _loggers()}
    capture = CapturedLogs()
    logs.configure("DEBUG", settings.secrets(), stream=capture.stream)
    ours = root.handlers[0]
    # pytest's handlers stay beside ours: it adds and removes them around each phase (setup,
    # call, teardown), and the `afterwards` audit captures across all three.
    root.handlers[:] = [*handlers, ours]
    try:
        yield capture
    finally:
        root.removeHandler(ours)
        root.setLevel(level)
        for name, logger in _loggers():
            logger.setLevel(levels.get(name, logging.NOTSET))


def _loggers() -> list[tuple[str, logging.Logger]]:
    return [
        (n, lg)
        for n, lg in logging.root.manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    ]
