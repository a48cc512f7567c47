"""SQLite connections for SQLAlchemy's aiosqlite dialect, one thread hop per statement.

aiosqlite runs each connection on its own thread, and every call it makes crosses to that
thread and back. SQLAlchemy's adapter makes four such calls per statement (open a cursor,
execute, fetch, close); on a busy 2-core machine the crossings, not SQLite, were most of the
cost of a payment (measured with cProfile: 36 hops per order, ~60 µs each). This cursor
executes, fetches everything and closes in one crossing, and answers SQLAlchemy's later
calls from what it kept. The event loop still never waits on SQLite; only the number of
round trips changes.

It relies on two internals of the pinned aiosqlite (`Connection._execute`, `_conn`), which
SQLAlchemy's own adapter uses as well; the whole test suite runs through it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any, Self

import aiosqlite


class _BufferedCursor:
    """A cursor whose `execute` brings back every row in the same round trip."""

    arraysize = 1

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection
        self._rows: list[Any] = []
        self.description: Sequence[Any] | None = None
        self.rowcount = -1
        self.lastrowid: int | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._rows = []

    async def execute(self, sql: str, parameters: Iterable[Any] | None = None) -> _BufferedCursor:
        return await self._run(sql, parameters or (), many=False)

    async def executemany(self, sql: str, parameters: Iterable[Iterable[Any]]) -> _BufferedCursor:
        return await self._run(sql, parameters, many=True)

    async def _run(self, sql: str, parameters: Any, *, many: bool) -> _BufferedCursor:
        raw: sqlite3.Connection = self._connection._conn

        def work() -> tuple[list[Any], Any, int, int | None]:
            cursor = raw.cursor()
            try:
                (cursor.executemany if many else cursor.execute)(sql, parameters)
                rows = cursor.fetchall() if cursor.description else []
                return rows, cursor.description, cursor.rowcount, cursor.lastrowid
            finally:
                cursor.close()

        (
            self._rows,
            self.description,
            self.rowcount,
            self.lastrowid,
        ) = await self._connection._execute(work)
        return self

    async def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        count = size or self.arraysize
        taken, self._rows = self._rows[:count], self._rows[count:]
        return taken

    async def fetchall(self) -> list[Any]:
        taken, self._rows = self._rows, []
        return taken

    async def close(self) -> None:
        self._rows = []


class _Connection(aiosqlite.Connection):
    def cursor(self) -> _BufferedCursor:  # type: ignore[override] - no round trip to open one
        return _BufferedCursor(self)


async def connect(path: str) -> aiosqlite.Connection:
    """An aiosqlite connection to the database file at `path`, with buffered cursors."""
    # check_same_thread=False as SQLAlchemy's aiosqlite dialect sets it: the connection is
    # used from its worker thread only, but created and closed through it from the loop.
    connection = _Connection(
        partial(sqlite3.connect, path, check_same_thread=False), iter_chunk_size=64
    )
    connection._thread.daemon = (
        True  # as SQLAlchemy does: a forgotten connection must not hang exit
    )
    try:
        return await connection
    except Exception:
        # aiosqlite stops its thread after a failed connect without waiting for it; the
        # thread then reports to this event loop, which may be closed by then (a traceback
        # at exit). Wait for it here, while the loop still runs.
        await asyncio.to_thread(connection._thread.join, 5.0)
        raise
