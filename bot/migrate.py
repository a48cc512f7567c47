"""Bringing the database schema up to date through Alembic, the only way it changes."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

from store.db import Database

_INI = Path(__file__).resolve().parent.parent / "migrations" / "alembic.ini"


def _config(connection: Connection) -> Config:
    config = Config(str(_INI))
    config.attributes["connection"] = connection
    return config


async def migrate(db: Database, revision: str = "head") -> None:
    """Apply every migration up to `revision` in one transaction.

    Every command that opens the database starts here, so this is where a database that
    cannot be opened is reported, in one line (`DatabaseUnavailable`).
    """
    await db.connect()
    async with db.engine.begin() as connection:
        await connection.run_sync(lambda sync: command.upgrade(_config(sync), revision))
