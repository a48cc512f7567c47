"""Key import: `keyvend keys import` of 100,000 keys against the fastest way SQLite can
take the same number of rows.

The real command line runs as a subprocess on a fresh SQLite shop with one product, and
its wall time covers everything an admin waits for: start-up, parsing, deduplication
(HMAC of every key, checked against the product's keys), Fernet encryption, and the
insert. The baseline, in the same run, is raw `sqlite3.executemany` of as many rows of the
same size (a random ciphertext of a real token's length, a 32-byte digest) into a table
with the same indexes and the same pragmas keyvend uses (WAL, synchronous=FULL), in one
transaction. The ratio is baseline seconds ÷ import seconds (keys/s ÷ rows/s).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from pathlib import Path

from bench.harness import SKU, Context, Row, failed_row, opened, run_cli, sqlite_database, tally
from store import catalogue
from store.crypto import KeyVault

NAME = "import"
GOAL = 0.25


async def run(ctx: Context) -> list[Row]:
    count = 20_000 if ctx.quick else 100_000
    try:
        return [await key_import(ctx, count)]
    except Exception as exc:  # noqa: BLE001 - the table still gets its line
        return [failed_row(f"key import {count:,} (sqlite)", f"≥ {GOAL:.2f}", exc)]


async def key_import(ctx: Context, count: int) -> Row:
    directory = ctx.scratch("import")
    url = await sqlite_database(directory)
    async with opened(url) as db:
        await catalogue.add_product(db, SKU, "Bench Game", "9.99", "usd")
    keys = [f"{SKU}-{i:07d}-{secrets.token_hex(8).upper()}" for i in range(count)]
    keyfile = directory / "keys.txt"
    keyfile.write_text("\n".join(keys) + "\n")

    code, out, err, seconds = await run_cli(ctx, url, "keys", "import", SKU, str(keyfile))
    if code != 0 or f"added {count}," not in out:
        raise RuntimeError(f"keyvend keys import: exit {code}: {(out + err).strip()[-300:]}")
    stored = (await tally(url)).keys.get("available", 0)
    if stored != count:
        raise RuntimeError(f"{stored} keys available after importing {count}")
    _, _, _, startup = await run_cli(ctx, url, "migrate")  # the same process start, no import

    token_bytes = len(KeyVault(ctx.key_secret).encrypt(keys[0]))
    raw = raw_executemany(directory / "raw.db", count, token_bytes)
    ratio = raw / seconds
    return Row(
        benchmark=f"key import {count:,} (sqlite)",
        figure=(
            f"{count / seconds:,.0f} keys/s ({seconds:.2f} s); "
            f"raw executemany {count / raw:,.0f} rows/s ({raw:.2f} s)"
        ),
        ratio=ratio,
        goal=f"≥ {GOAL:.2f}",
        passed=ratio >= GOAL,
        notes=[
            (
                f"`keyvend keys import` subprocess, wall time including {startup:.2f} s of process start "
                f"(a `keyvend migrate` on the same database); {count:,} keys stored; "
                f"raw rows: {token_bytes}-byte ciphertext + 32-byte digest, same indexes and pragmas"
            ),
        ],
    )


def raw_executemany(path: Path, count: int, token_bytes: int) -> float:
    """Seconds for sqlite3 to insert and commit `count` key-sized rows: the disk's and
    SQLite's own limit for this table, with nothing of keyvend in the way."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.executescript("""
            CREATE TABLE keys (
                id INTEGER PRIMARY KEY, product_id INTEGER NOT NULL, batch_id INTEGER NOT NULL,
                ciphertext BLOB NOT NULL, digest BLOB NOT NULL, status VARCHAR(10) NOT NULL,
                order_id INTEGER);
            CREATE UNIQUE INDEX uq_keys_product_id_digest ON keys (product_id, digest);
            CREATE INDEX ix_keys_product_id_status_id ON keys (product_id, status, id);
            CREATE INDEX ix_keys_order_id ON keys (order_id);
        """)
        rows = [
            (1, 1, os.urandom(token_bytes), os.urandom(32), "available", None) for _ in range(count)
        ]
        started = time.perf_counter()
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(
            "INSERT INTO keys (product_id, batch_id, ciphertext, digest, status, order_id) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        connection.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        connection.close()
