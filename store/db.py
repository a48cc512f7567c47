"""The database handle: one engine, one session factory, and the transaction boundary.

Every store function runs its work through `Database.write` or `Database.read`, which open
one session, run one transaction, commit only if the work returned normally, and retry the
whole unit when the database says it could not serialise it (SQLite busy, PostgreSQL
serialization failure or deadlock). Work functions therefore must be safe to run again:
they only touch the database inside the session they are given.

SQLite gets the settings an embedded shop needs: WAL (readers never wait for the writer),
`BEGIN IMMEDIATE` for writes (a write transaction takes the lock up front instead of
failing half-way when it tries to upgrade), a busy timeout for other processes such as
the command line, and an in-process write lock so concurrent writers queue on the event
loop rather than spinning in SQLite's busy handler.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_RETRIES = 8
# PostgreSQL SQLSTATEs that mean "run the transaction again".
_PG_RETRYABLE = {"40001", "40P01", "55P03"}


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError) and "locked" in str(exc.orig).lower():
        return True
    if isinstance(exc, DBAPIError):
        code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        return code in _PG_RETRYABLE
    return False


class Database:
    """The engine and the unit-of-work boundary shared by every store function."""

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 10) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo}
        if not self.is_sqlite:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        self._writes = async_sessionmaker(self.engine, expire_on_commit=False)
        self._reads = async_sessionmaker(
            self.engine.execution_options(keyvend_read_only=True), expire_on_commit=False
        )
        self._write_lock = asyncio.Lock() if self.is_sqlite else None

    async def write(
        self, work: Callable[Concatenate[AsyncSession, P], Awaitable[T]], *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run `work(session, ...)` in one write transaction, retried if it could not commit."""
        for attempt in range(_RETRIES):
            try:
                async with self._write_lock or nullcontext():
                    async with self._writes() as session, session.begin():
                        return await work(session, *args, **kwargs)
            except DBAPIError as exc:
                if not _is_transient(exc) or attempt == _RETRIES - 1:
                    raise
                delay = min(0.5, 0.01 * 2**attempt) * (0.5 + random.random())
                log.warning("database busy, retrying transaction in %.2fs", delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def read(
        self, work: Callable[Concatenate[AsyncSession, P], Awaitable[T]], *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run `work(session, ...)` in a read-only transaction (never takes the write lock)."""
        async with self._reads() as session, session.begin():
            return await work(session, *args, **kwargs)

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - health check: any failure means "not reachable"
            log.warning("database ping failed", exc_info=True)
            return False

    async def dispose(self) -> None:
        await self.engine.dispose()


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event own transaction start instead of pysqlite.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed payment survives a power cut, not only a killed process.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get("keyvend_read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
