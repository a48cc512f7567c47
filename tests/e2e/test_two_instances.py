"""Two `keyvend run` processes on one PostgreSQL and one Redis, as a scaled-out shop runs.

Both instances run with Telegram in webhook mode; the test plays the load balancer, posting
each buyer's updates to one instance or the other (with the secret-token header), and
spreads Stripe's events across both — in the first round every event is posted to both at
once. Proved:

- the two delivery workers never send one delivery twice: each order's key message
  arrives exactly once, in its buyer's chat;
- rate limits are shared through Redis: a buyer's checkouts are counted across instances
  (3 allowed per 10 minutes, Pay pressed 5 times alternately: 3 orders, 2 refusals);
- the claims of a SIGKILLed instance are taken over by the survivor, and only once their
  lease has run out (DELIVERY_LEASE, 8 s here); only those deliveries may arrive twice (the
  dead instance may have sent one just before it died) — the test reports how many did.

Ends with `keyvend check` and a grep of every log for imported keys.

The last test holds sends in the bot-wide rate limiter for longer than their lease: the
worker renews its leases, so nothing is claimed again and sent twice.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

import aiohttp
import pytest
from sqlalchemy import func, select

from bot.settings import Settings
from store.db import Database
from store.models import Order
from tests.e2e.conftest import Shop, free_port, running, shop_settings
from tests.e2e.helpers import (
    assert_invariants_hold,
    assert_own_keys_only,
    captured_logs,
    delivery_statuses,
    keys_by_order,
    new_keys,
    open_orders,
    paid,
    rows,
    scalar,
    stock,
    text,
    wait_until,
)
from tests.e2e.processes import App, StripeRetries, leased_to, sent_count, sent_times
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram

REDIS = (
    "redis://127.0.0.1:6379/13"  # the shared server; buyer ids unique to each run keep tests apart
)
WEBHOOK_SECRET = "keyvend-two-instances-test"
SHOPPERS = 30  # buy through Telegram, each update to either instance
CHECKOUT_LIMIT = 3
PRESSES = 5
TAKEOVER_ORDERS = 30  # paid, then the instance holding most of them is killed
# Instead of 60 s, so the takeover fits the test; longer than a worker's queue of sends
# (30 at 10/s), see test_a_send_queued_past_its_lease_is_not_sent_twice.
LEASE = timedelta(seconds=8)


def instance_settings(
    database_url: str, telegram: FakeTelegram, stripe_api: FakeStripe, key_secret: str
) -> Settings:
    """One instance of the scaled-out shop: webhook mode on its own port, the shared Redis."""
    port = free_port()
    return shop_settings(
        database_url,
        telegram,
        stripe_api,
        key_secret,
        http_port=port,
        public_url=f"http://127.0.0.1:{port}",
        telegram_mode="webhook",
        telegram_webhook_secret=WEBHOOK_SECRET,
        redis_url=REDIS,
        rate_limit_checkouts=f"{CHECKOUT_LIMIT}/10 minutes",
        max_unpaid_orders=10,
        telegram_rate=10.0,
        delivery_lease=LEASE,
        log_level="DEBUG",  # the key grep searches the most the app can log
    )


def run_unique_buyers() -> int:
    """The first buyer id of this run: the shared Redis keeps rate-limit windows for minutes."""
    return 10**12 + uuid.uuid4().int % 10**11 * 1000


class Balancer:
    """Plays the load balancer in front of the instances: posts Telegram updates to them."""

    def __init__(
        self, http: aiohttp.ClientSession, telegram: FakeTelegram, apps: list[App]
    ) -> None:
        self.http, self.telegram, self.apps = http, telegram, apps

    async def take_webhook(self) -> None:
        """Each instance registered its own URL with the fake Bot API, which keeps one; remove
        it, so that updates reach the instances only through `post`."""
        await wait_until(
            lambda: sum(c.method == "setWebhook" for c in self.telegram.calls) >= len(self.apps),
            timeout=30,
            what="every instance registering its webhook",
        )
        async with self.http.post(
            f"{self.telegram.url}/bot{self.telegram.token}/deleteWebhook"
        ) as reply:
            assert reply.status == 200

    async def post(self, app: App, update: dict) -> None:
        async with self.http.post(
            f"{app.url}/telegram/webhook",
            json=update,
            headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET},
        ) as reply:
            assert reply.status == 200, f"{app.name} answered {reply.status} to a Telegram update"

    async def buy(self, buyer: int, sku: str, first: App, second: App) -> str:
        """Open the product on one instance and its pay link on the other; returns the
        session id."""
        tg = self.telegram
        await self.post(first, tg.message(buyer, f"/start buy_{sku}"))
        card = await tg.wait_for(lambda m: m.chat_id == buyer and "Price:" in text(m), timeout=30)
        link = urlsplit(card.button("by card")["url"])
        async with self.http.get(f"{second.url}{link.path}", allow_redirects=False) as reply:
            assert reply.status == 303, f"{second.name} answered {reply.status} to a pay link"
            return reply.headers["Location"].rsplit("/", 1)[1]

    async def press_pay(self, buyer: int, data: str, app: App) -> str:
        """Press Pay once through `app`; returns what the button answered."""
        update = self.telegram.press(buyer, 1, data)
        query = update["callback_query"]["id"]
        await self.post(app, update)

        def answer() -> str | None:
            texts = [
                a.get("text") or ""
                for a in self.telegram.callback_answers
                if a.get("callback_query_id") == query
            ]
            return texts[0] if texts else None

        return await wait_until(answer, timeout=30, what="the Pay button answering")


async def busiest(shop: Shop, *apps: App, at_least: int) -> tuple[App, App]:
    """Wait until one instance holds `at_least` deliveries; returns it and the other one."""
    held: dict[str, int] = {}

    async def someone_busy() -> bool:
        for app in apps:
            held[app.name] = len(await leased_to(shop, app.pid))
        return max(held.values()) >= at_least

    await wait_until(someone_busy, timeout=30, what=f"an instance holding {at_least} deliveries")
    first, second = sorted(apps, key=lambda app: held[app.name], reverse=True)
    return first, second


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_two_instances_share_the_queue_and_the_limits_and_take_over_a_dead_claim(
    database_url: str, telegram: FakeTelegram, stripe_api: FakeStripe, key_secret: str, tmp_path
) -> None:
    started = time.monotonic()
    first_buyer = run_unique_buyers()
    a, b = (
        App(instance_settings(database_url, telegram, stripe_api, key_secret), tmp_path, name)
        for name in "ab"
    )
    db = Database(database_url)
    duo_keys, take_keys = (
        new_keys(SHOPPERS + CHECKOUT_LIMIT, "DUO"),
        new_keys(TAKEOVER_ORDERS, "TAKE"),
    )
    try:
        with captured_logs(a.settings) as logs:
            async with aiohttp.ClientSession() as http:
                shop = a.shop(db, telegram, stripe_api, http)
                duo = await stock(shop, "DUO", duo_keys)
                await asyncio.gather(a.start(), b.start())
                balancer = Balancer(http, telegram, [a, b])
                await balancer.take_webhook()
                stripe = StripeRetries(http, stripe_api, [a.url, b.url])

                # 1. Buyers spread over both instances; each event posted to both at once.
                shoppers = [first_buyer + i for i in range(SHOPPERS)]
                sessions = await asyncio.gather(
                    *(
                        balancer.buy(buyer, "DUO", *((a, b) if i % 2 else (b, a)))
                        for i, buyer in enumerate(shoppers)
                    )
                )
                events = [paid(stripe_api, session) for session in sessions]
                await asyncio.gather(
                    *(stripe.send(event, url=app.url) for event in events for app in (a, b))
                )
                shopper_orders = {
                    int(stripe_api.sessions[s]["client_reference_id"]) for s in sessions
                }

                async def shoppers_served() -> bool:
                    return await sent_count(shop, shopper_orders) == SHOPPERS

                await wait_until(shoppers_served, timeout=60, what="every shopper's keys sent")

                # 2. One buyer's checkouts, alternately on A and B, counted together.
                hasty = first_buyer + SHOPPERS
                answers = [
                    await balancer.press_pay(hasty, f"pay:{duo.id}:1", (a, b)[i % 2])
                    for i in range(PRESSES)
                ]

                async def hasty_orders_made() -> int:
                    return await scalar(shop, select(func.count()).where(Order.buyer_id == hasty))

                async def checkouts_made() -> bool:
                    return await hasty_orders_made() >= CHECKOUT_LIMIT

                # Pay is answered before its checkout is made: on a busy machine the last one
                # let through may still be under way when the fifth press is answered.
                await wait_until(checkouts_made, what="the hasty buyer's checkouts made")
                hasty_orders = await hasty_orders_made()

                # 3. The instance holding the most deliveries is killed while sending them.
                take = await stock(shop, "TAKE", take_keys)
                placed = await open_orders(
                    shop,
                    take.id,
                    [(first_buyer + SHOPPERS + 1 + i, 1) for i in range(TAKEOVER_ORDERS)],
                )
                # Telegram throttles the first send: that instance's sends wait 3 s while it
                # goes on claiming, so it surely holds a batch when it is killed.
                telegram.retry_after_seconds = 3
                telegram.fail_next(1, 429)
                await asyncio.gather(*(stripe.send(paid(stripe_api, p.session_id)) for p in placed))
                victim, survivor = await busiest(shop, a, b, at_least=10)
                held = await leased_to(shop, await victim.kill())
                takeover = {p.order_id for p in placed}
                assert held and set(held) <= takeover

                async def all_sent() -> bool:
                    return await sent_count(shop, takeover) == TAKEOVER_ORDERS

                await wait_until(all_sent, timeout=60, what="the survivor sending every delivery")
                await survivor.stop()
                elapsed = time.monotonic() - started

                assert stripe.refusals == {}, (
                    f"webhook posts not answered 200: {dict(stripe.refusals)}"
                )
                assert [("Too many requests" in text) for text in answers].count(
                    True
                ) == PRESSES - CHECKOUT_LIMIT
                assert hasty_orders == CHECKOUT_LIMIT

                sold = await keys_by_order(shop)
                assert sorted(sold) == sorted(shopper_orders | takeover)
                assert await delivery_statuses(shop) == {"sent": SHOPPERS + TAKEOVER_ORDERS}
                buyers = dict(await rows(shop, select(Order.id, Order.buyer_id)))
                twice = assert_own_keys_only(telegram, sold, buyers)
                assert set(twice) <= set(held), "a delivery no dead instance held was sent twice"
                assert max(twice.values(), default=1) == 1
                taken_over = await sent_times(shop, held)
                delays = [
                    (taken_over[o] - lease_end).total_seconds() for o, lease_end in held.items()
                ]
                assert min(delays) >= 0, (
                    "the survivor took over deliveries before the dead instance's lease ended"
                )

                report = await assert_invariants_hold(shop)
        assert not logs.leaked(duo_keys + take_keys, also=[a.logs(), b.logs(), report]), (
            "a key appears in the logs"
        )
        print(
            f"\ntwo instances: {len(sold)} orders ({SHOPPERS} bought through Telegram on both instances, "
            f"{TAKEOVER_ORDERS} more, then one instance killed); 0 duplicates between the two live workers; "
            f"{len(held)} deliveries held by the dead instance, taken over {min(delays):.1f}-{max(delays):.1f} s "
            f"after their lease ended, {len(twice)} of them arrived twice; "
            f"Pay pressed {PRESSES}x across both -> {hasty_orders} orders; {elapsed:.1f} s"
        )
    finally:
        for app in (a, b):
            if app.running:
                await app.kill()
        await db.dispose()


async def test_a_send_queued_past_its_lease_is_not_sent_twice(
    sqlite_url: str, telegram: FakeTelegram, stripe_api: FakeStripe, key_secret: str
) -> None:
    """A worker claims a batch, checks each lease once, then queues the sends in the bot-wide
    rate limiter. When the queue is longer than the lease (with the 60 s lease: 200 claimed
    deliveries at TELEGRAM_RATE=3, or any 429 with retry_after over ~50 s), the lease runs out
    under sends still waiting, the deliveries are claimed again and go out twice.

    Scaled down so it runs in seconds: DELIVERY_LEASE=3 s, TELEGRAM_RATE=4/s, 24 deliveries
    claimed at once — half of them still wait in the queue when their lease runs out.
    """
    settings = shop_settings(
        sqlite_url,
        telegram,
        stripe_api,
        key_secret,
        telegram_rate=4.0,
        delivery_lease=timedelta(seconds=3),
    )
    async with running(settings, telegram, stripe_api) as shop:
        product = await stock(shop, "QUEUE", new_keys(24, "QUEUE"))
        placed = await open_orders(shop, product.id, [(900_000 + i, 1) for i in range(24)])
        for p in placed:
            assert (await shop.post_event(paid(stripe_api, p.session_id))).status == 200
        await wait_until(
            lambda: _all_sent(shop, len(placed)), timeout=60, what="every key delivery sent"
        )
        sold = await keys_by_order(shop)
    # Stopping waited for the sends still in flight: the chats now hold everything sent.
    twice = assert_own_keys_only(telegram, sold, {p.order_id: p.buyer_id for p in placed})
    assert twice == {}, f"{len(twice)} of {len(placed)} key messages were sent twice"


async def _all_sent(shop: Shop, count: int) -> bool:
    return (await delivery_statuses(shop))["sent"] == count
