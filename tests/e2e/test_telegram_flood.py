"""Telegram flood: 300 key deliveries through a Bot API that throttles, fails and hangs.

The fake Bot API accepts at most 30 messages a second (more get 429 with `retry_after`),
answers 5% of sends with a 502 and lets 2% hang past python-telegram-bot's 5 s read
timeout; the bot is allowed to try 60 a second, so it does run into the cap. 300 paid
orders must all reach their buyers: every delivery ends `sent` with a message id, each
buyer holds their own keys (I4, I1), `keyvend check` passes and no key is logged (I5).

A message can arrive twice only when Telegram accepted it but the answer never came back
(a timeout after acceptance): the bot cannot tell that from a lost request, and sending
again is how it avoids losing a key. So the repeats are counted and bounded by the
timeouts injected when the fake accepts hung sends, and must be zero when it does not.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from store.models import Delivery, DeliveryKind, DeliveryStatus
from tests.e2e.conftest import running, shop_settings
from tests.e2e.helpers import (
    assert_invariants_hold,
    assert_own_keys_only,
    captured_logs,
    database_name,
    deliveries_settled,
    key_messages,
    keys_by_order,
    new_keys,
    open_orders,
    operator_view,
    paid,
    post_concurrently,
    rows,
    stock,
)

DELIVERIES = 300
FIRST_BUYER = 900_000
API_CAP = 30  # messages/second the fake Bot API accepts: Telegram's documented limit
BOT_RATE = (
    60.0  # messages/second the bot allows itself: twice that, so 429s come even on a slow machine
)


# python-telegram-bot warns about its own retry_after type on every 429 it builds.
@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
# Each database once and each kind of timeout once: which database the outbox lives in and
# what Telegram did with a hung send are independent, and all four pairs would cost twice
# the runtime for no further case.
@pytest.mark.parametrize(
    ("database_url", "timeout_accepts"),
    [("sqlite", True), ("postgresql", False)],
    ids=["sqlite-hung-sends-accepted", "postgresql-hung-sends-dropped"],
    indirect=["database_url"],
)
async def test_every_key_arrives_through_429s_5xx_and_timeouts(
    database_url, telegram, stripe_api, key_secret, timeout_accepts
) -> None:
    began = time.monotonic()
    settings = shop_settings(database_url, telegram, stripe_api, key_secret, telegram_rate=BOT_RATE)
    keys = new_keys(DELIVERIES, "FLOOD")
    with captured_logs(settings) as logs:
        async with running(settings, telegram, stripe_api) as shop:
            product = await stock(shop, "FLOOD", keys, price="2.99")
            placed = await open_orders(
                shop, product.id, [(FIRST_BUYER + i, 1) for i in range(DELIVERIES)]
            )

            telegram.rate_cap = API_CAP
            telegram.retry_after_seconds = 1
            telegram.fail_rate = 0.05
            telegram.timeout_rate = 0.02
            telegram.timeout_seconds = 6.0  # just past PTB's 5 s read timeout
            telegram.timeout_accepts = timeout_accepts
            posted = await post_concurrently(shop, [paid(stripe_api, p.session_id) for p in placed])
            assert [p.outcome for p in posted] == ["fulfilled"] * DELIVERIES
            statuses = await deliveries_settled(shop, DELIVERIES, timeout=150)

            deliveries = await rows(
                shop,
                select(
                    Delivery.kind,
                    Delivery.status,
                    Delivery.chat_id,
                    Delivery.message_id,
                    Delivery.attempts,
                ),
            )
            assert len(deliveries) == DELIVERIES
            assert all(
                d.kind == DeliveryKind.KEYS and d.status == DeliveryStatus.SENT for d in deliveries
            ), statuses
            # The recorded message id is one Telegram gave for a key message in that chat.
            assert all(
                d.message_id in {m.message_id for m in key_messages(telegram, d.chat_id)}
                for d in deliveries
            )
            sold = await keys_by_order(shop)
            twice = assert_own_keys_only(
                telegram,
                {p.order_id: sold[p.order_id] for p in placed},
                {p.order_id: p.buyer_id for p in placed},
            )
            repeats = sum(twice.values())
            assert telegram.throttled and telegram.failed and telegram.timed_out, (
                "the faults were not injected"
            )
            if timeout_accepts:
                assert repeats <= telegram.timed_out
            else:
                assert repeats == 0

            # No key outside the buyers' chats: logs, the check's report, metrics, admin alerts.
            exposed = [await assert_invariants_hold(shop), *await operator_view(shop)]
    assert logs.leaked(keys, also=exposed) == set()
    print(
        f"\nFIGURES telegram flood [{database_name(settings)}, hung sends "
        f"{'accepted' if timeout_accepts else 'dropped'}]: {DELIVERIES} deliveries, injected "
        f"{telegram.throttled}× 429, {telegram.failed}× 5xx, {telegram.timed_out} timeouts; "
        f"{repeats} key messages arrived twice; max attempts {max(d.attempts for d in deliveries)}; "
        f"{time.monotonic() - began:.1f} s"
    )
