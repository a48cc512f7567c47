"""Redis killed mid-test: limits are counted in the process instead, and buying keeps working.

The shop runs (in this event loop) with REDIS_URL pointing at a private redis-server, which
the test SIGKILLs between two purchases and later starts again on the same port. While it
is down a buyer still goes from the product card to a delivered key, `/healthz` says
`degraded` with `"rate_limits": "local"`, `keyvend_ratelimit_fallback_active` is 1 and
`keyvend_ratelimit_fallback_total` grows in `/metrics`, and a warning is logged. Once it is
back, `/healthz` says `ok` and the limits are counted in Redis again. Ends with `keyvend
check` and a grep of the logs for imported keys. And the attack the fallback stops: forty
clicks on "Pay" while Redis is dead open no more Stripe sessions than the limit allows.
"""

from __future__ import annotations

import time

from tests.e2e.conftest import Shop, running, shop_settings
from tests.e2e.helpers import (
    assert_invariants_hold,
    captured_logs,
    checkout,
    health,
    key_message,
    metric,
    new_keys,
    open_card,
    order_status,
    pay,
    snapshot,
    stock,
    text,
    wait_until,
)
from tests.e2e.processes import RedisServer
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram

SKU = "REDIS"
FALLBACK = "keyvend_ratelimit_fallback_total"
FALLING_BACK = "keyvend_ratelimit_fallback_active"
WARNING = "WARNING bot.ratelimit: Redis unreachable for rate limits"
TRY_AGAIN = "Too many requests — please try again in"


async def buy(shop: Shop, buyer: int) -> tuple[str, list[str]]:
    """One buyer's whole purchase, card to key; the order's status and the keys received."""
    sale = await checkout(shop, buyer, SKU)
    await pay(shop, sale)
    delivered = await key_message(shop, buyer)
    return await order_status(shop, sale.order_id), delivered.spoiler_texts()


async def test_buying_survives_redis_dying_and_health_recovers(
    sqlite_url: str, telegram: FakeTelegram, stripe_api: FakeStripe, key_secret: str, tmp_path
) -> None:
    started = time.monotonic()
    redis = RedisServer(tmp_path)
    await redis.start()
    settings = shop_settings(sqlite_url, telegram, stripe_api, key_secret, redis_url=redis.url)
    keys = new_keys(3, SKU)
    try:
        with captured_logs(settings) as logs:
            async with running(settings, telegram, stripe_api) as shop:
                await stock(shop, SKU, keys)
                assert await health(shop) == {
                    "status": "ok",
                    "database": True,
                    "redis": True,
                    "rate_limits": "redis",
                }
                before = await buy(shop, 5001)
                assert await metric(shop, FALLBACK) == 0

                await redis.kill()
                await wait_until(
                    lambda: _status_is(shop, "degraded"),
                    timeout=20,
                    what="/healthz saying degraded",
                )
                assert await health(shop) == {
                    "status": "degraded",
                    "database": True,
                    "redis": False,
                    "rate_limits": "local",
                }
                during = await buy(shop, 5002)
                fell_back = await metric(shop, FALLBACK)
                gauge_down = await metric(shop, FALLING_BACK)
                warned = WARNING in logs.stream.getvalue()

                await redis.start()
                await wait_until(
                    lambda: _status_is(shop, "ok"), timeout=20, what="/healthz back to ok"
                )
                assert (await health(shop))["rate_limits"] == "redis"
                after = await buy(shop, 5003)
                fell_back_after = await metric(shop, FALLBACK)
                gauge_up = await metric(shop, FALLING_BACK)
                counted = await redis.keys()
                report = await assert_invariants_hold(shop)
    finally:
        await redis.kill()

    assert [before[0], during[0], after[0]] == ["fulfilled"] * 3
    assert sorted(before[1] + during[1] + after[1]) == sorted(keys)
    # The purchase while Redis was dead: its updates and its checkout were counted here.
    assert fell_back >= 2 and gauge_down == 1
    assert warned, "no warning logged when the limiter could not reach Redis"
    assert fell_back_after == fell_back and gauge_up == 0, (
        "limits still counted locally after Redis came back"
    )
    assert any("5003" in key for key in counted), (
        f"no limit counted in the restarted Redis: {counted}"
    )
    assert not logs.leaked(keys, also=[report]), "an imported key appears in the logs"
    print(
        f"\nredis down: 3 orders (1 while Redis was dead), {fell_back:g} limit checks counted locally, "
        f"{time.monotonic() - started:.1f} s"
    )


async def _status_is(shop: Shop, status: str) -> bool:
    return (await health(shop))["status"] == status


async def test_forty_clicks_on_pay_with_redis_down_open_only_the_limit_of_sessions(
    sqlite_url: str, telegram: FakeTelegram, stripe_api: FakeStripe, key_secret: str, tmp_path
) -> None:
    # Each session the shop opens is a Stripe API call and a reservation: the limit is what
    # keeps one buyer from turning clicks into both, Redis or no Redis.
    redis = RedisServer(tmp_path)
    await redis.start()
    settings = shop_settings(
        sqlite_url,
        telegram,
        stripe_api,
        key_secret,
        redis_url=redis.url,
        rate_limit_checkouts="3/minute",
        max_unpaid_orders=100,  # so that only the rate limit stands in the way
    )
    try:
        async with running(settings, telegram, stripe_api) as shop:
            product = await stock(shop, SKU, 50)
            card = await open_card(shop, 5100, SKU)
            await redis.kill()
            sessions_before = len(stripe_api.sessions)
            since = time.monotonic()
            queries = {
                telegram.press(5100, card, f"pay:{product.id}:1")["callback_query"]["id"]
                for _ in range(40)
            }
            answers = await wait_until(
                lambda: (
                    found
                    if len(
                        found := [
                            a
                            for a in telegram.callback_answers
                            if str(a.get("callback_query_id")) in queries
                        ]
                    )
                    == len(queries)
                    else None
                ),
                what="an answer to each of the 40 presses",
            )
            refused = [a for a in answers if str(a.get("text", "")).startswith(TRY_AGAIN)]
            # A press let through is answered at once; its checkout message follows.
            await telegram.wait_for_count(
                lambda m: m.chat_id == 5100 and m.time >= since and text(m).startswith("Order #"),
                len(answers) - len(refused),
            )
            sessions = len(stripe_api.sessions) - sessions_before
            orders = (await snapshot(shop)).orders
            fell_back = await metric(shop, FALLBACK)
    finally:
        await redis.kill()

    assert sessions == 3, f"{sessions} Stripe checkout sessions opened for 40 clicks"
    assert sum(orders.values()) == 3 and len(refused) == 37
    assert fell_back >= 40
