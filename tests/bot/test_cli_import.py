"""`keyvend keys import` as a seller runs it: the real command in a subprocess, on SQLite.

Its exit code says whether keys went in: a script restocking from a supplier's file must
see a failure when every line was refused, and a file of nothing but blank lines is refused
as an empty file is. Lines in another encoding are reported as not UTF-8, never as binary.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.settings import Settings
from store import catalogue
from store.db import Database
from store.models import ImportBatch, Key
from tests.e2e.conftest import Completed, run_cli


@pytest.fixture
async def shop_db(sqlite_url: str, key_secret: str) -> Settings:
    """A database with the product GAME and no keys."""
    db = Database(sqlite_url)
    try:
        await catalogue.add_product(db, "GAME", "Space Game", "9.99", "usd")
    finally:
        await db.dispose()
    return Settings(_env_file=None, database_url=sqlite_url, key_encryption_key=key_secret)


async def _import(settings: Settings, tmp_path: Path, content: bytes) -> Completed:
    path = tmp_path / "keys.txt"
    path.write_bytes(content)
    return await run_cli(settings, "keys", "import", "GAME", str(path))


async def _counts(settings: Settings) -> tuple[int, int]:
    """(keys stored, import batches recorded)."""
    db = Database(settings.database_url)

    async def work(session):
        keys = await session.scalar(select(func.count()).select_from(Key))
        batches = await session.scalar(select(func.count()).select_from(ImportBatch))
        return keys, batches

    try:
        return await db.read(work)
    finally:
        await db.dispose()


def _one_line(result: Completed) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "content",
    [b"", b"\n\n   \n\t\r\n"],
    ids=["empty file", "blank lines"],
)
async def test_a_file_without_keys_is_refused_and_records_nothing(
    shop_db: Settings, tmp_path: Path, content: bytes
) -> None:
    result = await _import(shop_db, tmp_path, content)

    assert result.returncode == 1
    assert _one_line(result) == "keyvend: no keys found: send one key per line"
    assert await _counts(shop_db) == (0, 0)


async def test_an_import_whose_every_line_is_rejected_exits_non_zero(
    shop_db: Settings, tmp_path: Path
) -> None:
    result = await _import(shop_db, tmp_path, b"BAD\x07KEY\n" + b"X" * 1001 + b"\n\n")

    assert result.returncode == 1
    assert "rejected 3 lines (1 empty, 1 too long, 1 binary, 0 not UTF-8)" in result.stdout
    assert _one_line(result).endswith(
        "nothing imported from " + str(tmp_path / "keys.txt") + ": 3 lines rejected"
    )
    assert (await _counts(shop_db))[0] == 0


async def test_latin1_lines_are_reported_as_not_utf8(shop_db: Settings, tmp_path: Path) -> None:
    latin1 = "CAFÉ-1\nNIÑO-2\n".encode("latin-1")

    nothing = await _import(shop_db, tmp_path, latin1)
    assert nothing.returncode == 1
    assert "0 binary, 2 not UTF-8" in nothing.stdout
    assert _one_line(nothing).endswith(
        "2 lines rejected (save the file as UTF-8 and import it again)"
    )

    some = await _import(shop_db, tmp_path, b"GOOD-1\n" + latin1)
    assert some.returncode == 0, some.stderr
    assert "added 1," in some.stdout and "0 binary, 2 not UTF-8" in some.stdout
    assert "2 lines are not UTF-8 (save the file as UTF-8" in _one_line(some)

    resaved = await _import(shop_db, tmp_path, b"GOOD-1\n" + latin1.decode("latin-1").encode())
    assert resaved.returncode == 0, resaved.stderr
    assert "added 2, skipped 1 duplicates, rejected 0 lines" in resaved.stdout
    assert resaved.stderr == ""
    assert (await _counts(shop_db))[0] == 3


async def test_importing_the_same_file_again_adds_nothing_and_succeeds(
    shop_db: Settings, tmp_path: Path
) -> None:
    first = await _import(shop_db, tmp_path, b"K-1\nK-2\n")
    again = await _import(shop_db, tmp_path, b"K-1\nK-2\n")

    assert (first.returncode, again.returncode) == (0, 0), again.stderr
    assert "added 0, skipped 2 duplicates, rejected 0 lines" in again.stdout
    assert await _counts(shop_db) == (2, 2)
