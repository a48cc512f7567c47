"""Duplicate storm: Stripe's at-least-once delivery, at sale-day volume, has the effect of once.

500 real orders (1 to 3 keys each) are paid; every `checkout.session.completed` event is
POSTed five times and every session also gets an `expired` event, all copies shuffled and
sent 50 at a time to the running shop, on SQLite and on PostgreSQL. Proven: every order is
fulfilled exactly once with exactly its quantity of keys, no key on two orders (I1, I2,
I3); one key delivery per order and one key message per buyer, holding that buyer's own
keys (I4); one ledger row per distinct event (I3); stock adds up and `keyvend check` passes
(I6); no key in any log (I5).
"""

from __future__ import annotations

import random
import time
from collections import Counter

from sqlalchemy import select

from store.models import (
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    KeyStatus,
    Order,
    OrderStatus,
    PaymentEvent,
)
from tests.e2e.conftest import Shop, running, shop_settings
from tests.e2e.helpers import (
    Placed,
    assert_invariants_hold,
    assert_own_keys_only,
    captured_logs,
    database_name,
    deliveries_settled,
    expired,
    key_statuses,
    keys_by_order,
    new_keys,
    open_orders,
    operator_view,
    paid,
    post_concurrently,
    rows,
    stock,
)

ORDERS = 500
COPIES = 5  # of each completed event
IN_FLIGHT = 50
SPARE = 20  # keys nobody buys: they must still be available at the end
FIRST_BUYER = 700_000


async def test_duplicate_storm_fulfils_every_order_exactly_once(
    database_url, telegram, stripe_api, key_secret
):
    began = time.monotonic()
    # The bot's own pace (30 messages/s by default) would make 500 key messages take 17 s;
    # pacing under Telegram's limits is the flood test's subject, so here it may go flat out.
    settings = shop_settings(database_url, telegram, stripe_api, key_secret, telegram_rate=1000.0)
    wanted = [(FIRST_BUYER + i, 1 + i % 3) for i in range(ORDERS)]
    keys = new_keys(sum(quantity for _, quantity in wanted) + SPARE, "STORM")
    with captured_logs(settings) as logs:
        async with running(settings, telegram, stripe_api) as shop:
            product = await stock(shop, "STORM", keys, price="4.99")
            placed = await open_orders(shop, product.id, wanted)
            completed = [paid(stripe_api, p.session_id) for p in placed]
            late = [expired(stripe_api, p.session_id) for p in placed]
            storm = [event for event in completed for _ in range(COPIES)] + late
            random.Random(4).shuffle(storm)  # an expiry can come before every copy of its payment

            posted = await post_concurrently(shop, storm, in_flight=IN_FLIGHT)
            statuses = await deliveries_settled(shop, ORDERS, timeout=120)

            assert Counter(p.status for p in posted) == {200: len(storm)}
            fulfilled_by = Counter(p.order_id for p in posted if p.outcome == "fulfilled")
            assert fulfilled_by == {p.order_id: 1 for p in placed}, (
                "an order was fulfilled twice, or never"
            )
            await _assert_each_order_fulfilled_once(shop, placed)

            sold = await keys_by_order(shop)
            assert {order: len(k) for order, k in sold.items()} == {
                p.order_id: p.quantity for p in placed
            }
            all_sold = [key for order_keys in sold.values() for key in order_keys]
            assert len(all_sold) == len(set(all_sold)) and set(all_sold) <= set(keys)
            assert await key_statuses(shop, "STORM") == {
                KeyStatus.SOLD: len(all_sold),
                KeyStatus.AVAILABLE: SPARE,
            }
            twice = assert_own_keys_only(
                telegram,
                {p.order_id: sold[p.order_id] for p in placed},
                {p.order_id: p.buyer_id for p in placed},
            )
            repeats = sum(twice.values())
            assert repeats == 0, f"{repeats} key messages arrived twice"

            ledger = [event_id for (event_id,) in await rows(shop, select(PaymentEvent.event_id))]
            distinct = {event["id"] for event in storm}
            assert len(ledger) == len(distinct) and set(ledger) == distinct

            # No key outside the buyers' chats: logs, the check's report, metrics, admin alerts.
            exposed = [await assert_invariants_hold(shop), *await operator_view(shop)]
    assert logs.leaked(keys, also=exposed) == set()
    print(
        f"\nFIGURES duplicate storm [{database_name(settings)}]: {ORDERS} orders, {len(storm)} events posted "
        f"({len(distinct)} distinct, {len(storm) - len(distinct)} duplicates), "
        f"outcomes {dict(Counter(p.outcome for p in posted))}, deliveries {dict(statuses)}, "
        f"{time.monotonic() - began:.1f} s"
    )


async def _assert_each_order_fulfilled_once(shop: Shop, placed: list[Placed]) -> None:
    """Every order is fulfilled, by its own buyer, with one key delivery that was sent."""
    found = await rows(shop, select(Order.id, Order.buyer_id, Order.quantity, Order.status))
    assert {(o.id, o.buyer_id, o.quantity) for o in found} == {
        (p.order_id, p.buyer_id, p.quantity) for p in placed
    }
    assert {o.status for o in found} == {OrderStatus.FULFILLED}
    deliveries = await rows(
        shop, select(Delivery.order_id, Delivery.kind, Delivery.status, Delivery.message_id)
    )
    assert sorted(d.order_id for d in deliveries) == sorted(p.order_id for p in placed)
    assert all(
        d.kind == DeliveryKind.KEYS and d.status == DeliveryStatus.SENT and d.message_id
        for d in deliveries
    )
