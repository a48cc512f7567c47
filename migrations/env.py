"""Alembic's entry point, on the async engine keyvend itself uses.

`keyvend migrate` (and `keyvend run`) hand Alembic an open connection from the app's own
engine; run by hand (`alembic -c migrations/alembic.ini upgrade head`), the URL comes from
keyvend's Settings. One source of truth for both.
"""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from store.db import Database
from store.models import Base

config = context.config


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite can only change tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone() -> None:
    from bot.settings import Settings

    db = Database(Settings().database_url)
    try:
        async with db.engine.begin() as connection:
            await connection.run_sync(_migrate)
    finally:
        await db.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    _migrate(connection)
else:
    asyncio.run(_run_standalone())
