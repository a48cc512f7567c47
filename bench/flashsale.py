"""Flash sale: N buyers follow the seller's `/start buy_SKU` link at once, for fewer keys
than buyers; how long until every one of them holds a payment link or a sold-out answer.

Each buyer does what a person would: sends `/start buy_SKU` to the fake Bot API, waits for
the product card, and presses "💳 Pay by card" as soon as it arrives. A URL button (the pay
link) is opened over HTTP without following the redirect: the buyer holds a payment link
when the shop answers 303 to the Stripe Checkout page, or a sold-out answer when it
answers with the reason. A button with callback data (the flow before pay links) is
pressed in the chat, and the buyer is done when the bot's next message arrives. A card
that already says sold out is an answer by itself.

Every message the bot sends shares Telegram's bot-wide rate, so no shop can answer N
buyers faster than N ÷ TELEGRAM_RATE seconds (one message each): that floor, divided by
the time the last buyer waited, is the ratio. The fake Bot API is capped at the same rate,
with 429s past it, as Telegram would.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp

from bench import seed
from bench.harness import (
    FIRST_BUYER,
    SKU,
    Context,
    Row,
    database,
    failed_row,
    fakes,
    invariants_hold,
    keyvend_app,
    ms,
    opened,
    percentile,
    tally,
)
from store.crypto import KeyVault
from tests.fakes.telegram import FakeTelegram, SentMessage

NAME = "flash-sale"
GOAL = 0.8
RATE = 30.0  # Telegram's free bot-wide rate, messages/s
KEYS = 100
WAIT = 180.0  # seconds a buyer waits for any one answer before the run gives up on them


async def run(ctx: Context) -> list[Row]:
    try:
        return [await flash_sale(ctx)]
    except Exception as exc:  # noqa: BLE001 - the table still gets its line
        return [failed_row(_name(ctx), f"floor ÷ measured ≥ {GOAL}", exc)]


def _buyers(ctx: Context) -> int:
    return 200 if ctx.quick else 1000


def _name(ctx: Context) -> str:
    return f"flash sale: {_buyers(ctx)} buyers, {KEYS} keys, {RATE:.0f} msg/s (sqlite)"


def _text(message: SentMessage) -> str:
    return message.plain_text or message.text or ""


async def flash_sale(ctx: Context) -> Row:
    count = _buyers(ctx)
    buyers = range(FIRST_BUYER, FIRST_BUYER + count)
    async with (
        fakes(telegram_cap=RATE) as (telegram, stripe),
        database("sqlite", ctx.scratch("flash-sale")) as url,
    ):
        async with opened(url) as db:
            await seed.stocked_product(db, KeyVault(ctx.key_secret), keys=KEYS)
        async with (
            keyvend_app(
                ctx, url, telegram=telegram, stripe=stripe, telegram_rate=RATE, name="flash-sale"
            ),
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as http,
        ):
            began = time.monotonic()
            for buyer in buyers:
                telegram.message(buyer, f"/start buy_{SKU}")
            outcomes = await asyncio.gather(
                *(_buyer(telegram, http, buyer) for buyer in buyers), return_exceptions=True
            )
        await invariants_hold(ctx, url)
        left = await tally(url)
    done = [o for o in outcomes if isinstance(o, _Outcome)]
    failures = [o for o in outcomes if not isinstance(o, _Outcome)]
    waits = [o.at - began for o in done]
    measured = max(waits) if waits else float("inf")
    floor = count / RATE
    links = sum(o.link for o in done)
    messages = sum(
        1
        for m in telegram.sent
        if m.chat_id in buyers and m.method in ("sendMessage", "editMessageText")
    )
    ratio = floor / measured
    return Row(
        benchmark=_name(ctx),
        figure=(
            f"last buyer answered after {measured:.1f} s (floor {floor:.1f} s); "
            f"{links} payment links, {len(done) - links} sold out"
            + (f", {len(failures)} without an answer" if failures else "")
        ),
        ratio=ratio,
        goal=f"≥ {GOAL}",
        passed=ratio >= GOAL and not failures and links <= KEYS,
        p50=ms(percentile(waits, 50)) if waits else "",
        p99=ms(percentile(waits, 99)) if waits else "",
        notes=[
            (
                f"ratio = floor ÷ measured, floor = {count} buyers ÷ TELEGRAM_RATE {RATE:.0f}/s; "
                f"each buyer sends `/start buy_{SKU}` at once and presses Pay on the card as soon "
                f"as it arrives; the bot sent {messages / count:.2f} messages per buyer before "
                f"payment; 429s from the fake Bot API: {telegram.throttled}"
            ),
            (
                f"orders left: {dict(sorted(left.orders.items()))}, keys: "
                f"{dict(sorted(left.keys.items()))}; `keyvend check` clean afterwards"
                + (f"; first failure: {failures[0]!r}"[:200] if failures else "")
            ),
        ],
    )


class _Outcome:
    __slots__ = ("at", "link")

    def __init__(self, at: float, *, link: bool) -> None:
        self.at, self.link = at, link


async def _buyer(telegram: FakeTelegram, http: aiohttp.ClientSession, buyer: int) -> _Outcome:
    card = await telegram.wait_for(lambda m: m.chat_id == buyer and "Price:" in _text(m), WAIT)
    try:
        button = card.button("by card")
    except (AssertionError, KeyError, LookupError):
        return _Outcome(card.time, link=False)  # sold out already: the card says so
    if "url" in button:
        async with http.get(button["url"], allow_redirects=False) as response:
            await response.read()
            answered = time.monotonic()
        link = response.status == 303  # to the Stripe Checkout page
        if not link and response.status != 409:
            raise RuntimeError(f"buyer {buyer}: the pay link answered {response.status}")
        return _Outcome(answered, link=link)
    since = time.monotonic()
    telegram.press(buyer, card, button["callback_data"])
    answer = await telegram.wait_for(
        lambda m: m.chat_id == buyer and m.time >= since and m.method == "sendMessage", WAIT
    )
    with contextlib.suppress(AssertionError, KeyError, LookupError):
        return _Outcome(answer.time, link="url" in answer.button("Pay"))
    return _Outcome(answer.time, link=False)
