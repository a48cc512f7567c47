"""The business API end to end: a client orders over real HTTP from the running app.

On SQLite and PostgreSQL: a 10,000-key order paid from the balance and downloaded once;
a client racing a chat flash sale for the same product (no key on two orders);
idempotent retries (five at once with one key make one order); a balance that never goes
below its credit limit under concurrent orders; the one-time link refused a second time,
after it expires, and to another client; orders over the review threshold held for an
admin. After each test `keyvend check` passes (I1, I2, I6, balances equal ledgers) and no
key appears in any log line.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from store.models import AuditEntry, Client, Key, KeyStatus, LedgerEntry, Order, OrderStatus
from tests.e2e.helpers import (
    cards_for,
    keys_by_order,
    new_keys,
    open_pay_links,
    paid,
    post_concurrently,
    rows,
    scalar,
    stock,
    wait_until,
)
from tests.support.api import ApiClient, add_client, csv_keys, sold_keys, xlsx_keys

pytestmark = pytest.mark.usefixtures("afterwards")


async def test_bulk_order_of_10000_keys_downloads_once_as_xlsx_then_csv(launch, database_url):
    async with launch(database_url) as shop:
        await stock(shop, "BULK", new_keys(10_000, "BULK"), price="0.50")
        acme = await add_client(shop, "acme", balance="6000.00")

        placed = await acme.order("BULK", 10_000)
        assert placed.status == 201, placed.body
        order = placed.body
        assert order["status"] == "fulfilled" and order["quantity"] == 10_000
        assert order["amount"] == "5000.00" and order["download_url"]
        assert "BULK-" not in str(placed.body)  # keys never in a JSON body

        first = await acme.download(order["download_url"])
        assert first.status == 200
        assert first.headers["Content-Type"].startswith("application/vnd.openxmlformats")
        assert xlsx_keys(first.body) == await sold_keys(shop, order["id"])

        again = await acme.download(order["download_url"])
        assert (again.status, again.body["error"]["code"]) == (410, "download_used")

        # The order page offers a fresh link once the old one is spent: here as CSV.
        shown = await acme.call("GET", f"/orders/{order['id']}")
        assert shown.status == 200 and shown.body["download_url"] != order["download_url"]
        as_csv = await acme.download(shown.body["download_url"], csv=True)
        assert as_csv.status == 200 and as_csv.headers["Content-Type"].startswith("text/csv")
        assert csv_keys(as_csv.body) == await sold_keys(shop, order["id"])

        balance = await scalar(shop, select(Client.balance_minor).where(Client.name == "acme"))
        assert balance == 100_000
        statuses = Counter(
            s for (s,) in await rows(shop, select(Key.status).where(Key.order_id == order["id"]))
        )
        assert statuses == {KeyStatus.SOLD: 10_000}


async def test_five_concurrent_retries_with_one_key_make_one_order(launch, database_url):
    async with launch(database_url) as shop:
        await stock(shop, "GAME", new_keys(20, "GAME"), price="10.00")
        acme = await add_client(shop, "acme", balance="100.00")

        replies = await asyncio.gather(*(acme.order("GAME", 2, key="order-77") for _ in range(5)))

        assert [r.status for r in replies] == [201] * 5, [r.body for r in replies]
        assert len({r.body["id"] for r in replies}) == 1
        assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in replies) == 4
        assert await scalar(shop, select(func.count()).select_from(Order)) == 1
        assert await scalar(shop, select(Client.balance_minor)) == 8_000
        conflict = await acme.order("GAME", 3, key="order-77")
        assert (conflict.status, conflict.code) == (409, "idempotency_conflict")
        retried = await acme.order("GAME", 2, key="order-77")
        assert (retried.status, retried.body["id"]) == (201, replies[0].body["id"])
        assert await scalar(shop, select(func.count()).select_from(Order)) == 1


async def test_balance_never_goes_below_the_credit_limit_under_concurrent_orders(
    launch, database_url
):
    async with launch(database_url) as shop:
        await stock(shop, "GAME", new_keys(40, "GAME"), price="10.00")
        acme = await add_client(shop, "acme", balance="65.00", credit="20.00")

        replies = await asyncio.gather(*(acme.order("GAME", 1) for _ in range(25)))

        outcomes = Counter((r.status, r.code) for r in replies)
        assert outcomes == {(201, None): 8, (402, "insufficient_balance"): 17}, outcomes
        balance = await scalar(shop, select(Client.balance_minor))
        assert balance == 6_500 - 8 * 1_000 == -1_500
        ledger = await rows(shop, select(LedgerEntry.kind, LedgerEntry.amount_minor))
        assert sum(amount for _, amount in ledger) == balance
        assert Counter(kind for kind, _ in ledger) == {"topup": 1, "order": 8}
        sold = await scalar(shop, select(func.count()).where(Key.status == KeyStatus.SOLD))
        assert sold == 8


async def test_one_time_link_is_refused_when_used_expired_or_someone_elses(launch, database_url):
    async with launch(database_url, download_ttl=timedelta(seconds=1)) as shop:
        await stock(shop, "GAME", new_keys(5, "GAME"))
        acme = await add_client(shop, "acme")
        rival = await add_client(shop, "rival")
        order = (await acme.order("GAME", 2)).body

        # Another client sees no such order, and cannot use the link (which stays unused).
        peek = await rival.call("GET", f"/orders/{order['id']}")
        assert (peek.status, peek.code) == (404, "not_found")
        stolen = await rival.download(order["download_url"], token=rival.token)
        assert (stolen.status, stolen.body["error"]["code"]) == (404, "not_found")
        assert (await acme.download(order["download_url"], token=acme.token)).status == 200

        # Expiry: a link not used within DOWNLOAD_TTL is refused.
        fresh = await acme.call("POST", f"/orders/{order['id']}/download")
        assert fresh.status == 201
        await asyncio.sleep(1.2)
        late = await acme.download(fresh.body["download_url"])
        assert (late.status, late.body["error"]["code"]) == (410, "download_expired")
        unknown = await acme.download(f"{shop.url}/api/v1/downloads/dl_nothing")
        assert unknown.status == 404

        audit = [
            d
            for (d,) in await rows(
                shop, select(AuditEntry.detail).where(AuditEntry.action == "api.download")
            )
        ]
        assert len(audit) == 4, audit
        assert all("127.0.0.1" in line for line in audit), audit
        assert sum(line.endswith("served") for line in audit) == 1


async def test_an_order_over_the_review_threshold_waits_for_an_admin(launch, database_url):
    async with launch(database_url) as shop:
        await stock(shop, "GAME", new_keys(40, "GAME"), price="1.00")
        acme = await add_client(shop, "acme", review_over=10)
        small = (await acme.order("GAME", 10)).body
        big = (await acme.order("GAME", 11)).body
        assert (small["status"], big["status"]) == ("fulfilled", "review")
        assert big["download_url"] is None
        assert await scalar(shop, select(Client.balance_minor)) == 100_000 - 2_100

        approved = await shop.cli("client", "review", str(big["id"]), "--approve")
        assert approved.returncode == 0, approved.stderr
        shown = (await acme.call("GET", f"/orders/{big['id']}")).body
        assert shown["status"] == "fulfilled" and shown["download_url"]
        events = (await acme.call("GET", "/events")).body["data"]
        assert [e["data"]["order"]["id"] for e in events] == [small["id"], big["id"]]

        held = (await acme.order("GAME", 11)).body
        rejected = await shop.cli("client", "review", str(held["id"]), "--reject")
        assert rejected.returncode == 0, rejected.stderr
        assert await scalar(shop, select(Order.status).where(Order.id == held["id"])) == (
            OrderStatus.REFUNDED
        )
        assert await scalar(shop, select(Client.balance_minor)) == 100_000 - 2_100
        available = await scalar(
            shop, select(func.count()).where(Key.status == KeyStatus.AVAILABLE)
        )
        assert available == 40 - 21

        await wait_until(lambda: _alerted(shop, "held for review"), timeout=10)


async def _alerted(shop, words: str) -> bool:
    return any(words in (m.text or "") for m in shop.telegram.messages_to(4242))


async def test_a_client_racing_a_chat_flash_sale_never_gets_a_key_twice(
    launch, database_url, telegram, stripe_api
):
    async with launch(database_url, telegram_rate=1000.0) as shop:
        keys = new_keys(40, "RACE")
        await stock(shop, "RACE", keys, price="2.00")
        acme = await add_client(shop, "acme")
        buyers = list(range(900_000, 900_030))
        cards = await cards_for(telegram, buyers, "RACE")

        # Thirty buyers open their pay links while the client places ten orders of three keys.
        chat, api = await asyncio.gather(
            open_pay_links(shop.http, cards),
            asyncio.gather(*(acme.order("RACE", 3) for _ in range(10))),
        )
        sessions = [answer.session_id for answer in chat.values() if answer.session_id]
        api_orders = [r.body["id"] for r in api if r.status == 201]
        assert all(r.status == 201 or r.code == "out_of_stock" for r in api)
        assert len(sessions) + 3 * len(api_orders) <= 40
        assert len(sessions) + 3 * len(api_orders) >= 40 - 2  # short only where 3 did not fit

        posted = await post_concurrently(shop, [paid(stripe_api, s) for s in sessions])
        assert {p.outcome for p in posted} == {"fulfilled"}

        held = await keys_by_order(shop)
        owners = Counter(key for order_keys in held.values() for key in order_keys)
        assert max(owners.values()) == 1  # no key on two orders
        assert set(owners) <= set(keys)
        assert sorted(len(held[o]) for o in api_orders) == [3] * len(api_orders)
        assert len(held) == len(sessions) + len(api_orders)


async def test_client_commands_print_the_token_once_rotate_and_disable_it(launch, sqlite_url):
    async with launch(sqlite_url) as shop:
        await stock(shop, "GAME", new_keys(2, "GAME"))
        added = await shop.cli("client", "add", "acme", "--balance", "100.00", "--currency", "usd")
        assert added.returncode == 0, added.stderr
        token = next(line for line in added.stdout.splitlines() if line.startswith("kv_"))
        client = ApiClient(shop, "acme", token)
        assert (await client.order("GAME", 1)).status == 201

        rotated = await shop.cli("client", "token", "acme")
        new = next(line for line in rotated.stdout.splitlines() if line.startswith("kv_"))
        assert (await client.call("GET", "/products")).status == 401
        assert (await client.call("GET", "/products", token=new)).status == 200

        assert (await shop.cli("client", "topup", "acme", "50")).returncode == 0
        listed = await shop.cli("client", "list")
        assert "140.01 USD" in listed.stdout and token not in listed.stdout
        assert (await shop.cli("client", "disable", "acme")).returncode == 0
        assert (await client.call("GET", "/products", token=new)).status == 401

        for bad in (("client", "add", "acme"), ("client", "add", "new", "--balance", "ten")):
            refused = await shop.cli(*bad)
            assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, bad
