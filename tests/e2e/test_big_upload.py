"""A 20 MB restock upload while payments keep arriving: the shop must not stall, nor swell.

The shop runs as `keyvend run` in a process of its own, as in production. The admin
uploads a 20 MB key file through the chat (FakeTelegram serves it through `getFile` and its
file URL, as Telegram does) while a Stripe sender posts signed webhooks one after another
and times each answer, and the app's resident memory is sampled. The import must store
every key once (duplicates inside the file, across its batches and against keys stored
earlier are skipped), show its progress in one edited message, and keep `keyvend check`
green; webhooks keep being answered while the import runs (between its progress edits, not
only before or after it) and memory grows by less than 100 MB. (Before the fix, with the
whole file parsed and encrypted on the event loop: one webhook waited 21 s and memory grew
by 127 MB for a file of ~100,000 keys; ~1.1 GB was seen for 250,000.) The latencies are
printed, not asserted: speed belongs to `make bench`.
"""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import psutil
from sqlalchemy import func, select

from handlers.admin import MAX_UPLOAD
from store.db import Database
from store.models import ImportBatch, Key, Product
from tests.e2e.conftest import ADMIN, Shop, shop_settings
from tests.e2e.helpers import (
    assert_invariants_hold,
    checkout,
    paid,
    reply,
    scalar,
    sent_since,
    stock,
    text,
)
from tests.e2e.processes import App
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram

LINE = 300  # bytes a line: long keys keep the count (and the test's time) modest at 20 MB
EARLIER = (3, 4)  # the file's keys that are in stock already before the upload
REPEATED = 1000  # the file's last lines repeat its first ones, in another batch
PROGRESS = re.compile(r"^Imported ([\d,]+) of ~([\d,]+)…$")


def key_file() -> tuple[bytes, list[bytes]]:
    """A file of just under 20 MB: unique keys, then the first `REPEATED` of them again."""
    pad = b"-" + (b"0123456789ABCDEF" * (LINE // 16))[: LINE - 13]  # "BIG-%07d" + pad + "\n"
    count = (MAX_UPLOAD // LINE) - REPEATED
    keys = [b"BIG-%07d%s" % (i, pad) for i in range(count)]
    content = b"\n".join(keys + keys[:REPEATED]) + b"\n"
    assert MAX_UPLOAD - LINE < len(content) <= MAX_UPLOAD
    return content, keys


async def webhooks_until(
    shop: Shop, events: list[dict], done: asyncio.Event
) -> list[tuple[float, float]]:
    """Post signed events one after another until `done`; when each answer came
    (`time.monotonic()`, the fake Bot API's clock) and the seconds it took."""
    answers = []
    turn = 0
    while not done.is_set():
        body, headers = shop.stripe.signed(events[turn % len(events)])
        turn += 1
        started = time.perf_counter()
        async with shop.http.post(f"{shop.url}/stripe/webhook", data=body, headers=headers) as r:
            await r.read()
            assert r.status == 200, r.status
        answers.append((time.monotonic(), time.perf_counter() - started))
        await asyncio.sleep(0.01)
    return answers


async def peak_rss(pid: int, done: asyncio.Event) -> int:
    process, peak = psutil.Process(pid), 0
    while not done.is_set():
        peak = max(peak, process.memory_info().rss)
        await asyncio.sleep(0.02)
    return peak


async def test_a_20_mb_upload_keeps_webhooks_answering_and_memory_flat(
    sqlite_url: str, telegram: FakeTelegram, stripe_api: FakeStripe, key_secret: str, tmp_path
) -> None:
    content, keys = key_file()
    settings = shop_settings(sqlite_url, telegram, stripe_api, key_secret)
    app, db = App(settings, tmp_path), Database(sqlite_url)
    try:
        async with aiohttp.ClientSession() as http:
            shop = app.shop(db, telegram, stripe_api, http)
            await stock(shop, "GAME", 20)
            await stock(shop, "BIG", [keys[n].decode() for n in EARLIER])
            await app.start()
            sales = [await checkout(shop, 8000 + n, "GAME") for n in range(10)]
            # The first post of each pays an order; later ones are new events for paid orders.
            events = [paid(stripe_api, sale.session_id) for sale in sales]
            answer = await reply(telegram, ADMIN, "/restock BIG", contains="Send the keys")
            assert "BIG" in text(answer)

            done = asyncio.Event()
            baseline = psutil.Process(app.pid).memory_info().rss
            since = time.monotonic()
            sender = asyncio.create_task(webhooks_until(shop, events, done))
            sampler = asyncio.create_task(peak_rss(app.pid, done))
            upload = telegram.message(ADMIN, "", document=("keys.txt", content))
            try:
                report = await telegram.wait_for(
                    lambda m: sent_since(telegram, ADMIN, since)(m) and "added" in text(m),
                    timeout=180,
                )
            finally:
                done.set()
                answers, peak = await sender, await sampler
            seconds = time.monotonic() - since

            edits = [
                m
                for m in telegram.sent
                if m.chat_id == ADMIN and m.time >= since and PROGRESS.match(text(m))
            ]
            progress = [text(m) for m in edits]
            product_id = await scalar(shop, select(Product.id).where(Product.sku == "BIG"))
            stored = await scalar(
                shop, select(func.count()).select_from(Key).where(Key.product_id == product_id)
            )
            imported = await scalar(
                shop,
                select(func.sum(ImportBatch.added)).where(ImportBatch.product_id == product_id),
            )
            await assert_invariants_hold(shop)
            await app.stop()
    finally:
        if app.running:
            await app.kill()
        await db.dispose()

    latencies = sorted(seconds for _, seconds in answers)
    p99 = latencies[int(len(latencies) * 0.99)]
    growth = (peak - baseline) / 2**20
    print(
        f"\n20 MB upload: {len(keys):,} keys in {seconds:.1f} s; {len(latencies)} webhooks, "
        f"p99 {p99 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms; RSS +{growth:.0f} MB"
    )
    added = len(keys) - len(EARLIER)
    assert f"added {added:,}".replace(",", "") in text(report).replace(",", ""), text(report)
    assert f"skipped {REPEATED + len(EARLIER)} duplicates" in text(report), text(report)
    assert stored == imported == len(keys)
    assert (ADMIN, upload["message"]["message_id"]) in telegram.deleted
    # One message, edited as batches are stored: "Imported 40,000 of ~104,000…".
    assert progress, "no progress shown in the chat"
    assert len({m.message_id for m in telegram.sent if PROGRESS.match(text(m))}) == 1
    for line in progress:
        done_, total = (int(n.replace(",", "")) for n in PROGRESS.match(line).groups())
        assert 0 < done_ <= len(keys) + REPEATED and abs(total - len(keys)) < len(keys) * 0.2

    assert len(answers) >= 20, "too few webhooks during the import to judge"
    # Answered while the import was under way: between its first progress edit and its report.
    during = [at for at, _ in answers if edits[0].time < at < report.time]
    assert during, "no webhook was answered while the keys were being imported"
    assert growth < 100, f"memory grew by {growth:.0f} MB"
