"""Shared fixtures: real databases (SQLite and PostgreSQL), the key vault, Redis, a running shop.

PostgreSQL and Redis are the machine's own servers; a missing one stops the run at once
with one line saying how to start it, rather than skipping tests (`.ci/run` starts both).
Each test process (each pytest-xdist worker) gets a fresh PostgreSQL database, dropped at
the end; each test gets empty tables. Tests sharing the Redis server count against user ids
drawn fresh for each test, so parallel workers never share a rate-limit window.

The running-shop fixtures (`telegram` and `stripe_api`, the fakes; `key_secret`;
`settings`; `shop`, the real app running on them) are here so that tests/handlers/ and
tests/bot/ get them as tests/e2e/ does; how a shop runs is in tests/e2e/conftest.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from sqlalchemy import text

from bot.migrate import migrate
from bot.settings import Settings
from store.crypto import KeyVault
from store.db import Database
from store.models import Base
from tests.e2e.conftest import Shop, running, shop_settings
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram

POSTGRES_ADMIN = os.environ.get(
    "KEYVEND_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_ADDRESS = ("127.0.0.1", 6379)
_START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
_START_REDIS = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no '
    "--dir /var/lib/redis --logfile /var/log/redis/ci.log"
)


def pytest_sessionstart(session: pytest.Session) -> None:
    """A server that does not answer stops the run with one line saying how to start it,
    instead of a ConnectionRefusedError in every test that needs it."""
    if hasattr(session.config, "workerinput"):
        return  # an xdist worker: the controller has checked
    postgres = urlsplit(POSTGRES_ADMIN)
    needed = [
        ("PostgreSQL", (postgres.hostname or "127.0.0.1", postgres.port or 5432), _START_POSTGRES),
        ("Redis", REDIS_ADDRESS, _START_REDIS),
    ]
    for name, (host, port), start in needed:
        try:
            socket.create_connection((host, port), timeout=5).close()
        except OSError:
            raise pytest.UsageError(
                f"{name} does not answer on {host}:{port}: start it with `{start}` "
                "(or run .ci/run, which starts PostgreSQL and Redis, then make test)"
            ) from None


# The stress tests take most of a run's time. In a parallel run (`make test`) they start
# first, longest first, each followed by a light test: pytest-xdist hands a worker two tests
# at a time (with --maxschedchunk 1), so no worker queues two of them while another idles,
# and the run ends with short tests instead of a stress test started last.
HEAVY = (
    "tests/e2e/test_storms.py",
    "tests/e2e/test_crash.py",
    "tests/e2e/test_telegram_flood.py",
    "tests/e2e/test_two_instances.py",
    "tests/test_fresh_clone.py",
    "tests/e2e/test_flash_sale.py::test_flash_sale_sells_each_key_once",
    "tests/e2e/test_fuzz_webhook.py::test_signed_odd_events",
    "tests/e2e/test_fuzz_webhook.py::test_unsigned_input",
    "tests/store/test_deliveries.py::test_concurrent",
    "tests/fakes/test_fake_telegram.py::test_polling_application_under_load",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("numprocesses", None):
        return

    def rank(item: pytest.Item) -> int:
        return next((n for n, prefix in enumerate(HEAVY) if item.nodeid.startswith(prefix)), -1)

    heavy = sorted((item for item in items if rank(item) >= 0), key=rank)
    light = [item for item in items if rank(item) < 0]
    ordered: list[pytest.Item] = []
    for item in heavy:
        ordered.append(item)
        if light:
            ordered.append(light.pop(0))
    items[:] = ordered + light


async def _migrated(url: str) -> None:
    db = Database(url)
    try:
        await migrate(db)
    finally:
        await db.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test run."""
    name = f"keyvend_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    url = f"{base}/{name}"
    asyncio.run(_migrated(url))
    yield url
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies, instead of migrating again."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    asyncio.run(_migrated(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "keyvend.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL, on empty tables."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    url = request.getfixturevalue("postgres_url")
    asyncio.run(_truncate(url))
    return url


async def _truncate(url: str) -> None:
    db = Database(url)
    try:
        async with db.engine.begin() as conn:
            tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
            await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    finally:
        await db.dispose()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, pool_size=30)
    yield database
    await database.dispose()


@pytest.fixture
def vault() -> KeyVault:
    return KeyVault(KeyVault.generate())


# ---------------------------------------------------------------- a running shop


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
async def stripe_api() -> AsyncIterator[FakeStripe]:
    async with FakeStripe() as fake:
        yield fake


@pytest.fixture
def key_secret() -> str:
    return KeyVault.generate()


@pytest.fixture
def shop_database(request: pytest.FixtureRequest) -> str:
    """The running shop's database: SQLite, or each of SQLite and PostgreSQL for a test
    marked `on_both_databases` (tests/support/databases.py)."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return request.getfixturevalue("sqlite_url")
    url = request.getfixturevalue("postgres_url")
    asyncio.run(_truncate(url))
    return url


@pytest.fixture
def settings(
    shop_database: str, telegram: FakeTelegram, stripe_api: FakeStripe, key_secret: str
) -> Settings:
    return shop_settings(shop_database, telegram, stripe_api, key_secret)


@pytest.fixture
async def shop(
    settings: Settings, telegram: FakeTelegram, stripe_api: FakeStripe
) -> AsyncIterator[Shop]:
    async with running(settings, telegram, stripe_api) as running_shop:
        yield running_shop
