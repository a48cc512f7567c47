"""The bot-wide send pace and PTB's transport on aiohttp, against the fake Bot API."""

from __future__ import annotations

import asyncio
import time
from collections import deque

import pytest
from telegram.error import NetworkError, RetryAfter
from telegram.ext import ExtBot

from bot.telegram_api import AiohttpRequest, SendPace
from tests.fakes.telegram import FakeTelegram


def _bot(fake: FakeTelegram, rate: float) -> ExtBot:
    return ExtBot(
        fake.token,
        base_url=f"{fake.url}/bot",
        request=AiohttpRequest(connections=32),
        rate_limiter=SendPace(rate),
    )


def _most_in_one_second(times: list[float]) -> int:
    window: deque[float] = deque()
    most = 0
    for moment in sorted(times):
        window.append(moment)
        while window[0] <= moment - 1.0:
            window.popleft()
        most = max(most, len(window))
    return most


async def test_the_pace_never_exceeds_the_rate_in_any_second(telegram: FakeTelegram) -> None:
    telegram.rate_cap = 100  # the fake answers 429 past 100 in any second
    async with _bot(telegram, 100) as bot:
        await asyncio.gather(*(bot.send_message(9_000 + i, "hello") for i in range(250)))
    assert telegram.throttled == 0
    assert len(telegram.sent) == 250
    assert _most_in_one_second([m.time for m in telegram.sent]) <= 100


async def test_a_429_pauses_every_send_and_they_resume_at_pace(telegram: FakeTelegram) -> None:
    telegram.retry_after_seconds = 1
    async with _bot(telegram, 50) as bot:
        await bot.send_message(1, "warm-up")
        telegram.fail_next(1, status=429)
        throttled_at = time.monotonic()
        await asyncio.gather(*(bot.send_message(9_100 + i, "hello") for i in range(40)))
    after = [m.time for m in telegram.sent[1:]]
    assert len(after) == 40 and telegram.throttled == 1
    # Nothing went out while Telegram asked us to wait, and the queue did not then go out in
    # one burst (PTB's reference limiter sends everything queued during the pause at once).
    assert min(after) >= throttled_at + 1.0
    assert _most_in_one_second(after) <= 50


async def test_a_send_still_refused_after_its_retries_raises_retry_after(
    telegram: FakeTelegram,
) -> None:
    telegram.retry_after_seconds = 1
    telegram.fail_next(3, status=429)
    async with _bot(telegram, 50) as bot:
        with pytest.raises(RetryAfter):
            await bot.send_message(9_200, "hello")
    assert telegram.sent == [] and telegram.throttled == 3


@pytest.mark.parametrize("base", ["api.telegram.org", "ftp://api.telegram.org"])
async def test_a_transport_error_never_quotes_the_url_that_holds_the_token(base: str) -> None:
    token = "123456:" + "SecretTokenPart" * 3
    request = AiohttpRequest()
    await request.initialize()
    try:
        with pytest.raises(NetworkError) as failed:
            await request.do_request(f"{base}/bot{token}/getMe", "POST")
    finally:
        await request.shutdown()
    assert token not in str(failed.value)
    assert "<Bot API URL>" in str(failed.value)
