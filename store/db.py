"""The database handle: one engine, one session factory, and the transaction boundary.

Every store function runs its work through `Database.write` or `Database.read`, which open
one session, run one transaction, commit only if the work returned normally, and retry the
whole unit when the database says it could not serialise it (SQLite busy, PostgreSQL
serialization failure or deadlock). Work functions therefore must be safe to run again:
they only touch the database inside the session they are given.

SQLite gets the settings an embedded shop needs: WAL (readers never wait for the writer),
`BEGIN IMMEDIATE` for writes (a write transaction takes the lock up front instead of
failing half-way when it tries to upgrade), and a busy timeout for other processes such as
the command line. SQLite runs one write transaction at a time anyway, so instead of queueing
writers on a lock, concurrent writes are committed together (group commit): each unit of
work runs inside its own savepoint of one shared transaction, a unit that fails is rolled
back to its savepoint alone, and one commit — one fsync — covers them all. Each caller still
gets its own result or exception, and only after the commit.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import URL, event, make_url, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from store import sqlite
from store.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_RETRIES = 8
# PostgreSQL SQLSTATEs that mean "run the transaction again".
_PG_RETRYABLE = {"40001", "40P01", "55P03"}
# Units of work committed together at most (bounds how long the write lock is held).
_GROUP_LIMIT = 64
# Seconds PostgreSQL may take to accept a connection: an address that drops packets fails
# start-up in this time instead of asyncpg's default minute.
_CONNECT_TIMEOUT = 10.0


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError) and "locked" in str(exc.orig).lower():
        return True
    if isinstance(exc, DBAPIError):
        code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        return code in _PG_RETRYABLE
    return False


@dataclass(slots=True)
class _Unit:
    """One caller's unit of work waiting for the next group commit."""

    work: Callable[..., Awaitable[Any]]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    done: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Database:
    """The engine and the unit-of-work boundary shared by every store function."""

    def __init__(
        self, url: str, *, echo: bool = False, pool_size: int = 10, busy_timeout: float = 10.0
    ) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo, "hide_parameters": True}
        if self.is_sqlite:
            kwargs.update(
                async_creator=partial(sqlite.connect, make_url(url).database or ":memory:")
            )
        else:
            kwargs.update(
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                connect_args={"timeout": _CONNECT_TIMEOUT},
            )
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            _configure_sqlite(self.engine, busy_timeout)
        self._writes = async_sessionmaker(self.engine, expire_on_commit=False)
        self._reads = async_sessionmaker(
            self.engine.execution_options(keyvend_read_only=True), expire_on_commit=False
        )
        self._queue: list[_Unit] = []
        self._committer: asyncio.Task[None] | None = None

    async def write(
        self,
        work: Callable[Concatenate[AsyncSession, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run `work(session, ...)` in a write transaction, retried if it could not commit."""
        if not self.is_sqlite:
            return await self._retrying(lambda session: work(session, *args, **kwargs))
        unit = _Unit(work, args, kwargs)
        self._queue.append(unit)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_groups(), name="sqlite-group-commit")
        return await asyncio.shield(unit.done)

    async def read(
        self,
        work: Callable[Concatenate[AsyncSession, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run `work(session, ...)` in a read-only transaction (never takes the write lock)."""
        async with self._reads() as session, session.begin():
            return await work(session, *args, **kwargs)

    async def _retrying(self, run: Callable[[AsyncSession], Awaitable[T]]) -> T:
        for attempt in range(_RETRIES):
            try:
                async with self._writes() as session, session.begin():
                    return await run(session)
            except DBAPIError as exc:
                if not _is_transient(exc) or attempt == _RETRIES - 1:
                    raise
                delay = min(0.5, 0.01 * 2**attempt) * (0.5 + random.random())
                log.warning("database busy, retrying transaction in %.2fs", delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _commit_groups(self) -> None:
        while self._queue:
            group, self._queue = self._queue[:_GROUP_LIMIT], self._queue[_GROUP_LIMIT:]
            try:
                outcomes = await self._retrying(partial(_run_group, group=group))
            except Exception as exc:  # noqa: BLE001 - the commit itself failed: every unit failed
                for unit in group:
                    if not unit.done.done():
                        unit.done.set_exception(exc)
                continue
            for unit, (ok, value) in zip(group, outcomes, strict=True):
                if unit.done.done():
                    continue
                if ok:
                    unit.done.set_result(value)
                else:
                    unit.done.set_exception(value)

    async def connect(self) -> None:
        """Open one connection now, so that a database that cannot be used fails start-up
        with `DatabaseUnavailable` saying why, rather than the first unit of work."""
        try:
            async with self.engine.connect():
                return
        except (OSError, DBAPIError) as exc:
            raise DatabaseUnavailable(_why_unavailable(make_url(self.url), exc)) from None

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:  # health check: any failure means "not reachable"
            log.warning("database ping failed", exc_info=True)
            return False

    async def dispose(self) -> None:
        if self._committer is not None:
            await asyncio.gather(self._committer, return_exceptions=True)
        await self.engine.dispose()


async def _run_group(session: AsyncSession, group: list[_Unit]) -> list[tuple[bool, Any]]:
    """Run each unit in its own savepoint; a unit that raises is undone alone."""
    if len(group) == 1:
        unit = group[0]
        # Alone in the transaction: its failure rolls back the whole (its own) transaction.
        return [(True, await unit.work(session, *unit.args, **unit.kwargs))]
    outcomes: list[tuple[bool, Any]] = []
    for unit in group:
        try:
            async with session.begin_nested():
                value = await unit.work(session, *unit.args, **unit.kwargs)
        except DBAPIError as exc:
            if _is_transient(exc):
                raise  # the whole group is retried
            outcomes.append((False, exc))
        except Exception as exc:  # noqa: BLE001 - handed to the unit's caller
            outcomes.append((False, exc))
        else:
            outcomes.append((True, value))
    return outcomes


def _why_unavailable(url: URL, exc: OSError | DBAPIError) -> str:
    """One line on why the database at `url` cannot be opened; never its password."""
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "")
        folder = path.resolve().parent
        if not folder.is_dir():
            what = "is not a folder" if folder.exists() else "does not exist"
            return (
                f"cannot open the SQLite database {path}: {folder} {what}; "
                "create the folder or fix DATABASE_URL"
            )
        reason = getattr(exc, "orig", exc)
        return (
            f"cannot open the SQLite database {path} ({reason}): the file and its folder "
            "must be writable; check DATABASE_URL"
        )
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    if isinstance(exc, socket.gaierror):
        return f"the database host {url.host!r} in DATABASE_URL cannot be found: check its name"
    if isinstance(exc, ConnectionRefusedError):
        return f"no database answers at {where}: start PostgreSQL or fix DATABASE_URL"
    if isinstance(exc, TimeoutError):
        return (
            f"the database at {where} did not answer within {_CONNECT_TIMEOUT:g} s: "
            "check that it runs and DATABASE_URL points at it"
        )
    if isinstance(exc, OSError):
        return f"cannot reach the database at {where} ({exc.strerror or exc}): check DATABASE_URL"
    # asyncpg's own error, the server's words (a missing database or role, a wrong password).
    cause = getattr(exc.orig, "__cause__", None) or exc.orig
    if getattr(cause, "sqlstate", None) == "3D000":
        return (
            f"database {url.database!r} does not exist at {where}: create it "
            f"(createdb {url.database}) or fix DATABASE_URL"
        )
    return f"the database at {where} refused the connection ({cause}): check DATABASE_URL"


def _configure_sqlite(engine: AsyncEngine, busy_timeout: float) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event own transaction start instead of pysqlite.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed payment survives a power cut, not only a killed process.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Another process (the command line, a second shop on the file) holding the lock:
        # SQLite waits this long, then Database.write's retries take over.
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get("keyvend_read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
