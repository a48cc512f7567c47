"""`keyvend keys import` as a seller runs it, on SQLite.

Its exit code says whether keys went in: a script restocking from a supplier's file must
see a failure when every line was refused, and a file of nothing but blank lines is refused
as an empty file is. Lines in another encoding are reported as not UTF-8, never as binary.
The exit codes are checked on the real command in a subprocess; the reports on the
command's own function in this process, which is the same code without starting Python.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot import cli
from bot.settings import Settings
from store import catalogue
from store.db import Database
from store.errors import InvalidInput
from store.models import ImportBatch, Key
from tests.e2e.conftest import Completed, run_cli


@pytest.fixture
async def settings_with_game(sqlite_url: str, key_secret: str) -> Settings:
    """A database with the product GAME and no keys."""
    db = Database(sqlite_url)
    try:
        await catalogue.add_product(db, "GAME", "Space Game", "9.99", "usd")
    finally:
        await db.dispose()
    return Settings(_env_file=None, database_url=sqlite_url, key_encryption_key=key_secret)


def _file(tmp_path: Path, content: bytes) -> str:
    path = tmp_path / "keys.txt"
    path.write_bytes(content)
    return str(path)


async def _keyvend_import(settings: Settings, path: str) -> Completed:
    return await run_cli(settings, "keys", "import", "GAME", path)


async def _import_here(settings: Settings, path: str) -> int:
    return await cli.cmd_keys_import(settings, argparse.Namespace(sku="GAME", file=path))


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


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


async def test_a_file_of_blank_lines_is_refused_like_an_empty_file(
    settings_with_game: Settings, tmp_path: Path
) -> None:
    blank = await _keyvend_import(settings_with_game, _file(tmp_path, b"\n\n   \n\t\r\n"))

    assert blank.returncode == 1
    assert _one_line(blank.stderr) == "keyvend: no keys found: send one key per line"
    with pytest.raises(InvalidInput, match="^no keys found: send one key per line$"):
        await _import_here(settings_with_game, _file(tmp_path, b""))
    assert await _counts(settings_with_game) == (0, 0)


async def test_an_import_whose_every_line_is_rejected_exits_non_zero(
    settings_with_game: Settings, tmp_path: Path
) -> None:
    path = _file(tmp_path, b"BAD\x07KEY\n" + b"X" * 1001 + b"\n\n")

    result = await _keyvend_import(settings_with_game, path)

    assert result.returncode == 1
    assert "rejected 3 lines (1 empty, 1 too long, 1 binary, 0 not UTF-8)" in result.stdout
    assert _one_line(result.stderr) == f"keyvend: nothing imported from {path}: 3 lines rejected"
    assert (await _counts(settings_with_game))[0] == 0


async def test_latin1_lines_are_reported_as_not_utf8(
    settings_with_game: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    latin1 = "CAFÉ-1\nNIÑO-2\n".encode("latin-1")

    with pytest.raises(cli.Failure) as nothing:
        await _import_here(settings_with_game, _file(tmp_path, latin1))
    assert "0 binary, 2 not UTF-8" in capsys.readouterr().out
    assert str(nothing.value).endswith(
        "2 lines rejected (save the file as UTF-8 and import it again)"
    )

    assert await _import_here(settings_with_game, _file(tmp_path, b"GOOD-1\n" + latin1)) == 0
    some = capsys.readouterr()
    assert "added 1," in some.out and "0 binary, 2 not UTF-8" in some.out
    assert "2 lines are not UTF-8 (save the file as UTF-8" in _one_line(some.err)

    resaved = b"GOOD-1\n" + latin1.decode("latin-1").encode()
    assert await _import_here(settings_with_game, _file(tmp_path, resaved)) == 0
    again = capsys.readouterr()
    assert "added 2, skipped 1 duplicates, rejected 0 lines" in again.out
    assert again.err == ""
    assert (await _counts(settings_with_game))[0] == 3


async def test_importing_the_same_file_again_adds_nothing_and_succeeds(
    settings_with_game: Settings, tmp_path: Path
) -> None:
    path = _file(tmp_path, b"K-1\nK-2\n")
    assert await _import_here(settings_with_game, path) == 0

    again = await _keyvend_import(settings_with_game, path)

    assert again.returncode == 0, again.stderr
    assert "added 0, skipped 2 duplicates, rejected 0 lines" in again.stdout
    assert await _counts(settings_with_game) == (2, 2)
