"""Memory: peak resident memory of `keyvend run` on a big shop, idle and under webhook load.

The shop has 1,000,000 keys and 100,000 orders (a product's history after a busy season:
100,000 fulfilled orders, their keys sold, messages sent and revealed; 900,000 keys still
on sale). Building it through the store would take hours, so it is written with SQL
through the store's own tables (ciphertexts are real Fernet tokens of a few distinct keys,
digests random) and kept in a cache directory keyed by the schema revision, so only the
first run pays for it. Each run works on a copy.

Peak is the kernel's high-water mark (VmHWM) of the `keyvend run` process: after start-up
and an idle spell, then after the webhook benchmark's load (pending orders fulfilled
through signed events at the best SQLite concurrency found, or 16).
"""

from __future__ import annotations

import asyncio
import random
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, insert, select
from sqlalchemy.engine import Connection

from bench import seed, webhook
from bench.harness import (
    FIRST_BUYER,
    REPO,
    Context,
    Row,
    failed_row,
    fakes,
    keyvend_app,
    mb,
    measure_bare,
    migrated,
    opened,
)
from store import catalogue
from store.crypto import KeyVault
from store.models import (
    Buyer,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    ImportBatch,
    Key,
    KeyStatus,
    Order,
    OrderStatus,
    PaymentEvent,
    Product,
    Reveal,
)
from store.vault import open_vault

NAME = "memory"
GOAL_MB = 250
KEYS = 1_000_000
ORDERS = 100_000
BUILDER_VERSION = 1  # bump when the shape of the cached shop changes
_CHUNK = 50_000


async def run(ctx: Context) -> list[Row]:
    try:
        return await peak_memory(ctx)
    except Exception as exc:  # noqa: BLE001 - the table still gets its line
        return [failed_row("memory, 1M keys / 100k orders (sqlite)", f"≤ {GOAL_MB} MB", exc)]


def schema_revision() -> str:
    config = Config(str(REPO / "migrations" / "alembic.ini"))
    config.set_main_option("script_location", str(REPO / "migrations"))
    return str(ScriptDirectory.from_config(config).get_current_head())


async def big_shop(ctx: Context) -> tuple[Path, str]:
    """The cached big shop (built if missing): its SQLite file and its encryption secret."""
    directory = ctx.cache / f"big-shop-{schema_revision()}-v{BUILDER_VERSION}"
    database, secret_file = directory / "keyvend.db", directory / "secret"
    if not (database.exists() and secret_file.exists()):
        shutil.rmtree(directory, ignore_errors=True)
        building = directory.with_name(directory.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        secret = KeyVault.generate()
        await _build(building / "keyvend.db", secret)
        (building / "secret").write_text(secret)
        building.rename(directory)  # whole or not at all: an interrupted build is redone
    return database, secret_file.read_text().strip()


async def _build(path: Path, secret: str) -> None:
    url = f"sqlite+aiosqlite:///{path}"
    await migrated(url)
    async with opened(url) as db:
        await catalogue.add_product(
            db, "BIG", "Big Game", "9.99", "usd", delivery_template=seed.TEMPLATE
        )
        # Record the key now: the rows below carry random digests, which a database found
        # without a record would be refused for (nothing could have imported them).
        await open_vault(db, secret)
    # Bulk rows through a plain synchronous engine: no event-loop hop per statement.
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA synchronous=OFF")
            _fill(conn, KeyVault(secret))
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        engine.dispose()


def _fill(conn: Connection, vault: KeyVault) -> None:
    rng = random.Random(4)
    start = datetime.now(UTC) - timedelta(days=90)
    product = conn.scalar(select(Product.id).where(Product.sku == "BIG"))
    batch = conn.execute(
        insert(ImportBatch).returning(ImportBatch.id),
        [
            {
                "product_id": product,
                "source": "bench",
                "admin_id": None,
                "added": KEYS,
                "duplicates": 0,
                "rejected": 0,
                "created_at": start,
            }
        ],
    ).scalar_one()
    tokens = [vault.encrypt(f"BIG-{i:04d}-{rng.getrandbits(64):016X}") for i in range(16)]

    def when(i: int) -> datetime:
        return start + timedelta(seconds=i * 60)

    def chunked(rows_for, total: int, table) -> None:
        for begin in range(0, total, _CHUNK):
            conn.execute(
                insert(table), [rows_for(i) for i in range(begin, min(total, begin + _CHUNK))]
            )

    chunked(
        lambda i: {
            "id": FIRST_BUYER + i,
            "language": "en",
            "blacklisted": False,
            "first_seen": when(i),
            "last_seen": when(i),
        },
        ORDERS,
        Buyer,
    )
    chunked(
        lambda i: {
            "id": i + 1,
            "buyer_id": FIRST_BUYER + i,
            "product_id": product,
            "quantity": 1,
            "amount_minor": 999,
            "currency": "usd",
            "provider": "stripe",
            "provider_ref": f"cs_big_{i}",
            "payment_ref": f"pi_big_{i}",
            "status": OrderStatus.FULFILLED,
            "reserved_until": when(i) + seed.CHECKOUT_TTL,
            "check_after": when(i) + seed.CHECKOUT_TTL,
            "created_at": when(i),
            "paid_at": when(i),
            "paid_amount_minor": 999,
            "paid_currency": "usd",
            "fulfilled_at": when(i),
            "closed_at": when(i),
        },
        ORDERS,
        Order,
    )
    chunked(
        lambda i: {
            "id": i + 1,
            "product_id": product,
            "batch_id": batch,
            "ciphertext": tokens[i % len(tokens)],
            "digest": rng.randbytes(32),
            "status": KeyStatus.SOLD if i < ORDERS else KeyStatus.AVAILABLE,
            "order_id": i + 1 if i < ORDERS else None,
        },
        KEYS,
        Key,
    )
    chunked(
        lambda i: {
            "provider": "stripe",
            "event_id": f"evt_big_{i}",
            "type": "checkout.session.completed",
            "order_id": i + 1,
            "received_at": when(i),
        },
        ORDERS,
        PaymentEvent,
    )
    chunked(
        lambda i: {
            "id": i + 1,
            "order_id": i + 1,
            "kind": DeliveryKind.KEYS,
            "chat_id": FIRST_BUYER + i,
            "status": DeliveryStatus.SENT,
            "attempts": 1,
            "next_attempt_at": when(i),
            "message_id": 2,
            "created_at": when(i),
            "sent_at": when(i),
        },
        ORDERS,
        Delivery,
    )
    chunked(
        lambda i: {
            "order_id": i + 1,
            "delivery_id": i + 1,
            "how": DeliveryKind.KEYS,
            "chat_id": FIRST_BUYER + i,
            "message_id": 2,
            "revealed_at": when(i),
            "delete_after": None,
        },
        ORDERS,
        Reveal,
    )


async def peak_memory(ctx: Context) -> list[Row]:
    started = asyncio.get_running_loop().time()
    cached, secret = await big_shop(ctx)
    built = asyncio.get_running_loop().time() - started
    directory = ctx.scratch("memory")
    shutil.copy(cached, directory / "keyvend.db")
    url = f"sqlite+aiosqlite:///{directory / 'keyvend.db'}"
    idle_seconds = 3 if ctx.quick else 15
    load = webhook.events_per_level(ctx)
    concurrency = ctx.best_concurrency.get("sqlite", 16)
    async with fakes(telegram_cap=webhook.TELEGRAM_RATE) as (telegram, stripe):
        async with opened(url) as db:
            product = await db.read(
                lambda s: s.scalar(select(Product.id).where(Product.sku == "BIG"))
            )
            orders = await seed.pending_orders(
                db, stripe, product, load + 1, first_buyer=FIRST_BUYER + ORDERS
            )
        bare = await measure_bare(
            ctx, seed.paid_events(stripe, [orders.pop()[1]])[0], (concurrency,)
        )
        async with keyvend_app(
            ctx,
            url,
            telegram=telegram,
            stripe=stripe,
            telegram_rate=webhook.TELEGRAM_RATE,
            name="memory",
            key_secret=secret,
        ) as app:
            await asyncio.sleep(idle_seconds)
            idle = app.process.peak_rss()
            result = await webhook.post_paid(
                app.port,
                stripe,
                [session for _, session in orders],
                concurrency,
                server=app.process,
            )
            loaded = app.process.peak_rss()
    base = bare.peak_rss
    cache_note = f"built in {built:.0f} s" if built > 5 else "reused from the cache"
    common = (
        f"`keyvend run` subprocess on a copy of the cached shop ({cache_note}: {cached.parent}); "
        f"ratio = keyvend's peak ÷ the bare aiohttp process's ({mb(base)})"
    )
    return [
        Row(
            benchmark="memory, 1M keys / 100k orders, idle (sqlite)",
            figure=f"peak RSS {mb(idle)} after start and {idle_seconds} s idle",
            ratio=idle / base,
            goal=f"≤ {GOAL_MB} MB",
            passed=idle <= GOAL_MB * 10**6,
            notes=[common],
        ),
        Row(
            benchmark="memory, 1M keys / 100k orders, webhook load (sqlite)",
            figure=f"peak RSS {mb(loaded)} after {load} events at concurrency {concurrency} "
            f"({result.rate:.0f} events/s)",
            ratio=loaded / base,
            goal=f"≤ {GOAL_MB} MB",
            passed=loaded <= GOAL_MB * 10**6,
        ),
    ]
