"""Shared fixtures: real databases (SQLite and PostgreSQL), the key vault, Redis, a running shop.

PostgreSQL and Redis are the machine's own servers; a missing one fails the run rather
than skipping tests (`.ci/run` starts them). Each test run gets a fresh PostgreSQL
database, dropped at the end; each test gets empty tables.

The running-shop fixtures (`telegram` and `stripe_api`, the fakes; `key_secret`;
`settings`; `shop`, the real app running on them) are here so that tests/handlers/ and
tests/bot/ get them as tests/e2e/ does; how a shop runs is in tests/e2e/conftest.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

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
def settings(
    sqlite_url: str, telegram: FakeTelegram, stripe_api: FakeStripe, key_secret: str
) -> Settings:
    return shop_settings(sqlite_url, telegram, stripe_api, key_secret)


@pytest.fixture
async def shop(
    settings: Settings, telegram: FakeTelegram, stripe_api: FakeStripe
) -> AsyncIterator[Shop]:
    async with running(settings, telegram, stripe_api) as running_shop:
        yield running_shop
