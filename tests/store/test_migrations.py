"""The schema changes only through migrations: they build exactly the models, and undo."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from bot.migrate import _config, migrate
from store.db import Database
from store.models import Base


async def test_migrations_build_the_models_and_round_trip(database_url: str) -> None:
    db = Database(database_url)
    try:
        await migrate(db)
        async with db.engine.begin() as connection:
            await connection.run_sync(lambda sync: command.downgrade(_config(sync), "base"))
        await migrate(db)
        async with db.engine.connect() as connection:
            differences = await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
        assert differences == [], differences
    finally:
        await db.dispose()
