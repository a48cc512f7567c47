"""Rate limits: `bot.ratelimit.RateLimiter` against the real Redis, and the limits as a buyer
meets them in the running shop.

Unit tests use Redis database 14 and user ids drawn fresh for every test, so runs (and the
other test files using Redis) never share a counter. Redis going away is modelled with a
private `redis-server` this file starts and kills; the machine's shared one is never touched.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.metrics import Metrics
from bot.ratelimit import RateLimiter
from store.models import OrderStatus
from tests.e2e.conftest import ADMIN, free_port, running, shop_settings
from tests.e2e.helpers import (
    checkout,
    open_card,
    open_pay_link,
    press,
    reply,
    sent_since,
    snapshot,
    stock,
    text,
)
from tests.e2e.processes import RedisServer

REDIS = "redis://127.0.0.1:6379/14"
TRY_AGAIN = "Too many requests — please try again in"


def _user() -> int:
    """A user id no other test (or earlier run) has counted against."""
    return 10**12 + uuid.uuid4().int % 10**12


def _limiter(
    redis_url: str | None = REDIS, *, retry_every: float = 5.0, **limits: str
) -> tuple[RateLimiter, Metrics]:
    metrics = Metrics()
    return RateLimiter(
        limits or {"checkouts": "3/minute"},
        redis_url=redis_url,
        metrics=metrics,
        retry_every=retry_every,
    ), metrics


def _fallbacks(metrics: Metrics) -> float:
    """Limit checks counted in this process because Redis could not be reached."""
    return metrics.registry.get_sample_value("keyvend_ratelimit_fallback_total") or 0.0


def _falling_back(metrics: Metrics) -> float:
    """The gauge an operator alerts on: 1 while limits are counted per instance."""
    return metrics.registry.get_sample_value("keyvend_ratelimit_fallback_active") or 0.0


async def _hits(limiter: RateLimiter, bucket: str, user: int, n: int) -> list[datetime | None]:
    return [await limiter.hit(bucket, user) for _ in range(n)]


@pytest.mark.parametrize("redis_url", [REDIS, None], ids=["redis", "memory"])
async def test_n_are_allowed_then_refused_until_a_time_in_the_future(redis_url: str | None) -> None:
    limiter, metrics = _limiter(redis_url)
    user = _user()

    results = await _hits(limiter, "checkouts", user, 5)

    assert results[:3] == [None, None, None]
    now = datetime.now(UTC)
    for retry_at in results[3:]:
        assert retry_at is not None and now < retry_at <= now + timedelta(minutes=1, seconds=1)
    assert limiter.healthy and _fallbacks(metrics) == 0 and _falling_back(metrics) == 0
    assert limiter.local is (redis_url is None)


async def test_buckets_and_users_are_counted_apart() -> None:
    limiter, _ = _limiter(checkouts="2/minute", updates="2/minute")
    user, other = _user(), _user()

    await _hits(limiter, "checkouts", user, 2)

    assert await limiter.hit("checkouts", user) is not None
    assert await _hits(limiter, "updates", user, 2) == [None, None]
    assert await _hits(limiter, "checkouts", other, 2) == [None, None]


async def test_two_limiters_on_one_redis_share_the_count() -> None:
    # What several instances behind a load balancer rely on: the limit is per user, not per process.
    first, _ = _limiter()
    second, _ = _limiter()
    user = _user()

    assert await _hits(first, "checkouts", user, 2) == [None, None]
    assert await second.hit("checkouts", user) is None

    assert await first.hit("checkouts", user) is not None
    assert await second.hit("checkouts", user) is not None
    assert first.shared and second.shared


async def test_without_redis_the_count_is_kept_in_this_process() -> None:
    first, _ = _limiter(None)
    second, _ = _limiter(None)
    user = _user()

    await _hits(first, "checkouts", user, 3)

    assert await first.hit("checkouts", user) is not None
    assert await second.hit("checkouts", user) is None  # another process knows nothing of it
    assert not first.shared and await first.ping()


async def test_unreachable_redis_falls_back_to_the_same_limits_in_this_process() -> None:
    # Failing open would let one buyer open a Stripe session per click while Redis is down.
    limiter, metrics = _limiter(f"redis://127.0.0.1:{free_port()}/0")
    user = _user()

    results = await _hits(limiter, "checkouts", user, 5)

    assert results[:3] == [None, None, None]
    assert all(retry_at is not None for retry_at in results[3:])
    assert limiter.healthy is False and limiter.local
    assert _fallbacks(metrics) == 5 and _falling_back(metrics) == 1
    assert await limiter.ping() is False


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    await server.kill()


async def test_a_redis_that_dies_and_comes_back_is_used_again(private_redis: RedisServer) -> None:
    await private_redis.start()
    limiter, metrics = _limiter(private_redis.url, retry_every=60, checkouts="2/minute")
    user = _user()
    counted = await _hits(limiter, "checkouts", user, 3)
    assert counted[:2] == [None, None] and counted[2] is not None

    await private_redis.kill()
    # Counted afresh in this process, but limited all the same.
    down = await _hits(limiter, "checkouts", user, 3)
    assert down[:2] == [None, None] and down[2] is not None
    assert limiter.healthy is False and limiter.local
    assert _fallbacks(metrics) == 3 and _falling_back(metrics) == 1

    await private_redis.start()  # an empty Redis: counting starts afresh
    assert await limiter.ping()  # what /healthz asks; it also ends the fallback
    results = await _hits(limiter, "checkouts", user, 3)
    assert results[:2] == [None, None] and results[2] is not None
    assert limiter.healthy is True and not limiter.local
    assert _fallbacks(metrics) == 3 and _falling_back(metrics) == 0
    assert await private_redis.keys(), "nothing counted in the restarted Redis"


async def test_while_falling_back_redis_is_tried_again_after_a_while(
    private_redis: RedisServer,
) -> None:
    # Without anyone asking /healthz, the limiter itself finds Redis back.
    await private_redis.start()
    limiter, metrics = _limiter(private_redis.url, retry_every=0.2, checkouts="2/minute")
    user = _user()
    await private_redis.kill()
    assert (await _hits(limiter, "checkouts", user, 3))[2] is not None
    assert limiter.local

    await private_redis.start()
    await asyncio.sleep(0.25)
    results = await _hits(limiter, "checkouts", user, 3)

    assert results[:2] == [None, None] and results[2] is not None
    assert not limiter.local and _falling_back(metrics) == 0
    assert await private_redis.keys()


# ---------------------------------------------------------------- in the running shop

BUYER = 6001


def _seconds(message: str) -> int:
    return int(message.removeprefix(TRY_AGAIN).split()[0])


async def test_a_checkout_over_the_limit_is_refused_and_opens_no_order(
    sqlite_url: str,
    telegram,
    stripe_api,
    key_secret: str,
) -> None:
    settings = shop_settings(
        sqlite_url, telegram, stripe_api, key_secret, rate_limit_checkouts="2/minute"
    )
    async with running(settings, telegram, stripe_api) as shop:
        product = await stock(shop, "GAME", 10)
        await checkout(shop, BUYER, "GAME", 1)
        await checkout(shop, BUYER, "GAME", 2)
        card = await open_card(shop, BUYER, "GAME")

        again = await open_pay_link(shop.http, card)  # the same purchase: its open checkout
        refused = await open_pay_link(shop.http, await open_card(shop, BUYER, "GAME", 3))
        answer = await press(telegram, BUYER, card, f"pay:{product.id}:3")  # the chat's button

        assert again.status == 303
        assert refused.status == 429 and refused.reason.startswith(TRY_AGAIN)
        assert 0 < _seconds(refused.reason) <= 60
        assert answer["text"].startswith(TRY_AGAIN) and answer.get("show_alert")
        assert (await snapshot(shop)).orders == {OrderStatus.PENDING: 2}


async def test_updates_over_the_limit_get_the_try_again_answer(
    sqlite_url: str,
    telegram,
    stripe_api,
    key_secret: str,
) -> None:
    settings = shop_settings(
        sqlite_url, telegram, stripe_api, key_secret, rate_limit_updates="3/minute"
    )
    async with running(settings, telegram, stripe_api):
        since = time.monotonic()
        for _ in range(5):
            telegram.message(BUYER, "/help")
        await telegram.wait_for_count(sent_since(telegram, BUYER, since), 4)
        # Admins are never throttled: they may need to act during a flood.
        admin_answers = [text(await reply(telegram, ADMIN, "/help")) for _ in range(5)]

        # The flooding user is told once a minute, not once per update: answering every
        # excess update would spend the bot's sending budget, which deliveries share.
        texts = sorted(text(m) for m in telegram.messages_to(BUYER) if m.time >= since)
        helps = [t for t in texts if t.startswith("/start")]
        refusals = [t for t in texts if t.startswith(TRY_AGAIN)]
        assert len(helps) == 3 and len(refusals) == 1, texts
        assert all(0 < _seconds(t) <= 60 for t in refusals)
        assert all(a.startswith("/start") for a in admin_answers)
