"""Crash: keyvend is SIGKILLed again and again while it takes payments and delivers keys.

The app runs as a real `keyvend run` process. 300 paid orders' `checkout.session.completed`
events are posted to it the way Stripe posts them (anything but a 200 is sent again), the
fake Bot API answers slowly enough that delivery takes several seconds, and the process is
killed at seeded random moments — the first kill always while events are still being
posted — and started again each time. When it has finished, on SQLite and on PostgreSQL:

- every event was answered 200 in the end and fulfilled its order exactly once: one ledger
  row per event, every order fulfilled with exactly its one key and one key delivery;
- every paid order's key reached its own buyer's chat (50 buyers paid twice: their chat
  holds exactly their two keys), no key reached another chat, every delivery is `sent`;
- a killed process's claims on deliveries were taken over only once their lease had run
  out (DELIVERY_LEASE, 12 s here instead of 60 s, so a run fits in seconds);
- `keyvend check` passes and no imported key appears in any log.

A buyer may get their key message twice — only when a kill fell between Telegram accepting
the message and the worker committing that it was sent, so only for a delivery a killed
process held; the test reports how often.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime, timedelta

import aiohttp
from sqlalchemy import func, select

from store.db import Database
from store.models import Delivery, DeliveryKind, Order, OrderStatus, PaymentEvent
from tests.e2e.conftest import Shop, shop_settings
from tests.e2e.helpers import (
    assert_invariants_hold,
    assert_own_keys_only,
    captured_logs,
    database_name,
    delivery_statuses,
    keys_by_order,
    new_keys,
    open_orders,
    paid,
    rows,
    stock,
    wait_until,
)
from tests.e2e.processes import App, StripeRetries, leased_to, sent_times
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram

ORDERS = 300
REPEAT_BUYERS = 50  # these buyers pay for two orders each
KILLS = 4
SEED = 3
FIRST_BUYER = 700_000
SKU = "CRASH"
# Longer than the worker's queue of sends (200 claimed at 30/s: 7 s), see
# test_two_instances.test_a_send_queued_past_its_lease_is_not_sent_twice.
LEASE = timedelta(seconds=12)


def buyers() -> list[int]:
    once = ORDERS - REPEAT_BUYERS
    return [FIRST_BUYER + i for i in range(once)] + [FIRST_BUYER + i for i in range(REPEAT_BUYERS)]


async def kill_repeatedly(
    app: App, shop: Shop, stripe: StripeRetries, rng: random.Random
) -> tuple[int, dict[int, datetime]]:
    """Kill the app KILLS times at random moments, restarting it each time.

    The first kill waits until a random share of the events has been answered, so it lands
    while webhooks are being processed; the others come a random time after a restart.
    Returns the kills made and the deliveries a killed process held: order id -> the end of
    the last such lease.
    """
    first_at = rng.randint(ORDERS // 5, ORDERS // 2)
    await wait_until(
        lambda: stripe.answered >= first_at and stripe.in_flight > 0,
        timeout=60,
        what=f"{first_at} events answered",
    )
    kills, held = 0, {}
    while kills < KILLS:
        if kills:
            await asyncio.sleep(rng.uniform(0.3, 1.5))
        if stripe.answered == ORDERS and (await delivery_statuses(shop))["sent"] == ORDERS:
            break  # nothing left to interrupt
        dead = await app.kill()
        kills += 1
        held.update(await leased_to(shop, dead))
        await app.start()
    return kills, held


async def test_killed_mid_run_every_paid_order_reaches_its_own_buyer_once(
    database_url: str, telegram: FakeTelegram, stripe_api: FakeStripe, key_secret: str, tmp_path
) -> None:
    started = time.monotonic()
    # LOG_LEVEL=DEBUG: the key grep searches the most the app can log.
    settings = shop_settings(
        database_url,
        telegram,
        stripe_api,
        key_secret,
        telegram_rate=30.0,
        delivery_lease=LEASE,
        log_level="DEBUG",
    )
    keys = new_keys(ORDERS, SKU)
    app, db = App(settings, tmp_path), Database(database_url)
    try:
        with captured_logs(settings) as logs:
            async with aiohttp.ClientSession() as http:
                shop = app.shop(db, telegram, stripe_api, http)
                product = await stock(shop, SKU, keys)
                placed = await open_orders(shop, product.id, [(buyer, 1) for buyer in buyers()])
                events = [paid(stripe_api, p.session_id) for p in placed]
                telegram.latency = (
                    0.02  # with the app's 30 messages/s: about ten seconds of delivery
                )
                await app.start()
                stripe = StripeRetries(http, stripe_api, [app.url])
                sending = asyncio.create_task(stripe.send_all(events))
                kills, held = await kill_repeatedly(app, shop, stripe, random.Random(SEED))
                await sending

                async def all_sent() -> bool:
                    return (await delivery_statuses(shop))["sent"] == ORDERS

                await wait_until(all_sent, timeout=90, what="every key delivery sent")
                await app.stop()
                elapsed = time.monotonic() - started

                # Stripe's retries: every event answered 200 in the end, each applied once.
                assert stripe.answered == ORDERS
                assert stripe.retried > 0, (
                    "no event was ever refused: the kills missed the webhooks"
                )
                ledger = await rows(shop, select(PaymentEvent.event_id))
                assert sorted(e for (e,) in ledger) == sorted(e["id"] for e in events)
                assert await rows(
                    shop, select(Order.status, func.count()).group_by(Order.status)
                ) == [(OrderStatus.FULFILLED, ORDERS)]
                per_order = await rows(
                    shop,
                    select(func.count())
                    .where(Delivery.kind == DeliveryKind.KEYS)
                    .group_by(Delivery.order_id),
                )
                assert per_order == [(1,)] * ORDERS
                assert await delivery_statuses(shop) == {"sent": ORDERS}
                sold = await keys_by_order(shop)
                assert sorted(sold) == sorted(p.order_id for p in placed)
                assert all(len(k) == 1 for k in sold.values())

                # Telegram: each buyer holds exactly their own keys; a second copy only of a
                # message whose delivery a killed process held (sent, killed before the commit).
                twice = assert_own_keys_only(
                    telegram, sold, {p.order_id: p.buyer_id for p in placed}
                )
                assert set(twice) <= set(held)
                assert max(twice.values(), default=1) <= KILLS
                # A killed process's claim was taken over only when its lease had run out.
                finished = await sent_times(shop, held)
                early = [o for o, lease_end in held.items() if finished[o] < lease_end]
                assert not early, (
                    f"{len(early)} deliveries were taken over before the dead process's lease ended"
                )

                report = await assert_invariants_hold(shop)
        assert not logs.leaked(keys, also=[app.logs(), report]), (
            "an imported key appears in the logs"
        )
        assert kills == KILLS
        print(
            f"\ncrash[{database_name(settings)}]: {ORDERS} orders, {kills} kills, "
            f"{stripe.retried} events re-sent by 'Stripe' ({sum(stripe.attempts.values())} POSTs), "
            f"{sum(o == 'duplicate' for o in stripe.outcomes.values())} answered 'duplicate' (committed, answer lost); "
            f"{len(held)} deliveries held by a killed process, {len(twice)} key messages arrived twice "
            f"({len({p.buyer_id for p in placed if p.order_id in twice})} buyers); {elapsed:.1f} s"
        )
    finally:
        if app.running:
            await app.kill()
        await db.dispose()
