"""Helpers for tests that drive a running shop: stock it, act as a buyer, look inside it.

Shared by the bad-input, rate-limit and operations tests (tests/handlers/, tests/bot/,
tests/e2e/). Everything here goes through the same doors a seller, a buyer or Stripe use —
store functions for stocking (what `keyvend product add` and `keyvend keys import` call),
FakeTelegram updates for buyers and admins, signed FakeStripe events for payments — and
reads outcomes from the database, never from logs.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from sqlalchemy import func, select

from store import catalogue, inventory
from store.catalogue import ProductView
from store.crypto import KeyVault
from store.models import Delivery, Key, Order, PaymentEvent, Product, Reveal
from tests.e2e.conftest import Shop
from tests.fakes.telegram import FakeTelegram, SentMessage

UNKNOWN_COMMAND = "Sorry, I don't know that command. /help lists what I can do."


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
                {f"{kind}:{status}": n for kind, status, n in await session.execute(
                    select(Delivery.kind, Delivery.status, func.count()).group_by(Delivery.kind, Delivery.status)
                )}
            ),
            reveals=await session.scalar(select(func.count()).select_from(Reveal)),
            products=await session.scalar(select(func.count()).select_from(Product)),
        )

    return await shop.db.read(work)


async def order_status(shop: Shop, order_id: int) -> str:
    return await scalar(shop, select(Order.status).where(Order.id == order_id))


async def key_statuses(shop: Shop, sku: str) -> Counter:
    result = await rows(
        shop,
        select(Key.status, func.count()).join(Product, Product.id == Key.product_id)
        .where(Product.sku == sku).group_by(Key.status),
    )
    return Counter({status: n for status, n in result})


async def order_count(shop: Shop) -> int:
    return await scalar(shop, select(func.count()).select_from(Order))


def vault(shop: Shop) -> KeyVault:
    return KeyVault(shop.settings.key_encryption_key.get_secret_value())


async def stored_keys(shop: Shop, sku: str) -> list[tuple[bytes, str]]:
    """Every key of a product as (ciphertext, decrypted text), in import order."""
    query = (
        select(Key.ciphertext).join(Product, Product.id == Key.product_id)
        .where(Product.sku == sku).order_by(Key.id)
    )
    ciphertexts = await rows(shop, query)
    box = vault(shop)
    return [(c, box.decrypt(c)) for (c,) in ciphertexts]


async def wait_until(check: Callable[[], Any] | Callable[[], Awaitable[Any]], *, timeout: float = 10.0,
                     what: str = "condition") -> Any:
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


async def outbox_empty(shop: Shop) -> Snapshot:
    """Wait until the delivery worker has recorded every queued message; the snapshot then."""
    async def done() -> Snapshot | None:
        state = await snapshot(shop)
        return None if any(k.endswith(":queued") for k in +state.deliveries) else state

    return await wait_until(done, what="the outbox to empty")


# ---------------------------------------------------------------- stocking


async def stock(shop: Shop, sku: str, keys: int | list[str] = 3, *, name: str | None = None,
                price: str = "9.99", currency: str = "usd", **options: Any) -> ProductView:
    """Add a product and import keys for it (GAME-KEY-000, GAME-KEY-001, ... when given a count)."""
    product = await catalogue.add_product(shop.db, sku, name or f"{sku} key", price, currency, **options)
    lines = [f"{sku}-KEY-{i:03d}" for i in range(keys)] if isinstance(keys, int) else keys
    if lines:
        await inventory.restock(shop.db, vault(shop), sku, inventory.parse_keys("\n".join(lines)), source="test")
    return product


# ---------------------------------------------------------------- acting in the chat


def sent_since(tg: FakeTelegram, chat_id: int, since: float) -> Callable[[SentMessage], bool]:
    """A predicate for messages to `chat_id` accepted after `since` (time.monotonic())."""
    return lambda m: m.chat_id == chat_id and m.time >= since


def text(message: SentMessage) -> str:
    return message.plain_text if message.plain_text is not None else (message.text or "")


async def reply(tg: FakeTelegram, user: int, command: str, *, document: tuple[str, bytes] | None = None,
                contains: str = "") -> SentMessage:
    """Send a message as `user` and wait for the bot's next message to them (holding `contains`)."""
    since = time.monotonic()
    tg.message(user, command, document=document)
    seen = sent_since(tg, user, since)
    return await tg.wait_for(lambda m: seen(m) and contains in text(m))


async def press(tg: FakeTelegram, user: int, message: SentMessage | int, data: str) -> dict[str, Any]:
    """Press a button (real or forged) as `user` and wait for the bot to answer the query."""
    query_id = tg.press(user, message, data)["callback_query"]["id"]

    def answered() -> dict[str, Any] | None:
        return next((a for a in tg.callback_answers if str(a.get("callback_query_id")) == query_id), None)

    return await wait_until(answered, what=f"an answer to the button {data!r}")


async def open_card(shop: Shop, buyer: int, sku: str, quantity: int | None = None) -> SentMessage:
    """`/buy SKU [QTY]` and the product card it opens."""
    command = f"/buy {sku}" if quantity is None else f"/buy {sku} {quantity}"
    return await reply(shop.telegram, buyer, command, contains="Price:")


@dataclass(frozen=True)
class Checkout:
    order_id: int
    session_id: str
    message: SentMessage


async def checkout(shop: Shop, buyer: int, sku: str, quantity: int = 1) -> Checkout:
    """Open the product card and press "Pay": an order with its keys reserved and a Stripe session."""
    tg = shop.telegram
    card = await open_card(shop, buyer, sku, quantity)
    since = time.monotonic()
    tg.press(buyer, card, card.button("by card")["callback_data"])
    seen = sent_since(tg, buyer, since)
    started = await tg.wait_for(lambda m: seen(m) and text(m).startswith("Order #"))
    session_id = started.button("Pay")["url"].rsplit("/", 1)[1]
    order_id = int(shop.stripe.sessions[session_id]["client_reference_id"])
    return Checkout(order_id, session_id, started)


async def pay(shop: Shop, sale: Checkout, **pay_options: Any) -> aiohttp.ClientResponse:
    """The buyer pays on Stripe and Stripe sends `checkout.session.completed`."""
    shop.stripe.pay(sale.session_id, **pay_options)
    response = await shop.post_event(shop.stripe.completed_event(sale.session_id))
    assert response.status == 200, await response.text()
    return response


async def key_message(shop: Shop, buyer: int, *, since: float = 0.0) -> SentMessage:
    """The next message carrying keys (spoilers) to `buyer`."""
    seen = sent_since(shop.telegram, buyer, since)
    return await shop.telegram.wait_for(lambda m: seen(m) and bool(m.spoiler_texts()))


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


async def post(shop: Shop, path: str, body: bytes | Any, headers: dict[str, str] | None = None) -> Answer:
    """POST raw bytes (or a streaming body) to the running shop."""
    async with shop.http.post(f"{shop.url}{path}", data=body, headers=headers or {}) as response:
        raw = await response.read()
        payload = None
        if response.content_type == "application/json" and raw:
            payload = await response.json()
        return Answer(response.status, response.content_type, payload)


async def post_in_pieces(shop: Shop, path: str, body: bytes, headers: dict[str, str], *,
                         pieces: int = 3, pause: float = 0.05) -> int:
    """POST with a Content-Length, the body written in `pieces` with pauses between them.

    That is how a body arrives over a real network (TCP segments, a proxy in between); on
    the loopback interface a small body otherwise always arrives in one read. Returns the
    HTTP status.
    """
    host, port = shop.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}", "Connection: close"]
        head += [f"{name}: {value}" for name, value in headers.items() if name.lower() != "content-length"]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        size = -(-len(body) // pieces)
        for start in range(0, len(body), size):
            writer.write(body[start:start + size])
            await writer.drain()
            await asyncio.sleep(pause)
        status_line = await asyncio.wait_for(reader.readline(), timeout=10)
        await reader.read()
        return int(status_line.split()[1])
    finally:
        writer.close()
