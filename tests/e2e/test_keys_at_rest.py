"""The real `keyvend` command line on SQLite and PostgreSQL: a wrong KEY_ENCRYPTION_KEY is
refused by every command in one line, and a rotation runs start to finish — from the
command line alone, and on a running shop that keeps selling through it.

The attack this closes: started with another key, keyvend used to import the same keys a
second time (their digests differ), `keyvend check` said all was well, and the shop took
payments for keys it could never decrypt.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.settings import Settings
from store.crypto import KeyVault
from store.db import Database
from store.models import Key, Product
from tests.e2e.conftest import Launch, run_cli
from tests.e2e.helpers import checkout, key_message, new_keys, pay, press, stock

OLD, NEW, STRANGER = KeyVault.generate(), KeyVault.generate(), KeyVault.generate()
KEYS = ["AAAA-1111", "BBBB-{order}-2222", "CCCC-3333"]


def _as(database_url: str, secret: str) -> Settings:
    return Settings(_env_file=None, database_url=database_url, key_encryption_key=secret)


async def _count(database_url: str, model: type) -> int:
    db = Database(database_url)
    try:

        async def work(session):
            return await session.scalar(select(func.count()).select_from(model))

        return await db.read(work)
    finally:
        await db.dispose()


@pytest.fixture
async def stocked_shop(database_url: str, tmp_path: Path) -> Path:
    """A database with product GAME and three keys imported under OLD; the key file."""
    keys = tmp_path / "keys.txt"
    keys.write_text("\n".join(KEYS) + "\n")
    shop = _as(database_url, OLD)
    added = await run_cli(
        shop, "product", "add", "GAME", "--name", "G", "--price", "1", "--currency", "usd"
    )
    assert added.returncode == 0, added.stderr
    imported = await run_cli(shop, "keys", "import", "GAME", str(keys))
    assert imported.returncode == 0 and "added 3," in imported.stdout, imported
    return keys


REFUSING = [
    ["keys", "import", "GAME", "KEYFILE"],
    ["stats"],
    ["check"],
    ["product", "list"],
    ["product", "add", "DLC", "--name", "D", "--price", "1", "--currency", "usd"],
    ["keys", "reencrypt"],
    ["run"],
]


async def test_a_wrong_key_is_refused_by_every_command_in_one_line(
    database_url: str, stocked_shop: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # For `run`: a bot token, and a Bot API that is not there. Were the key not checked first,
    # it would fail later, on Telegram, with another message.
    monkeypatch.setenv("BOT_TOKEN", "123456789:AAHfAKEfAKEfAKEfAKEfAKEfAKEfAKEfAKE")
    monkeypatch.setenv("TELEGRAM_API_URL", "http://127.0.0.1:9")
    stranger = _as(database_url, STRANGER)

    for command in REFUSING:
        args = [str(stocked_shop) if a == "KEYFILE" else a for a in command]
        refused = await run_cli(stranger, *args)

        assert refused.returncode != 0, command
        assert refused.stdout == "", command
        [line] = refused.stderr.splitlines()
        assert line.startswith("keyvend: KEY_ENCRYPTION_KEY does not match this database"), line
        assert all(secret not in line for secret in (OLD, STRANGER))
    assert await _count(database_url, Key) == 3  # nothing imported a second time
    assert await _count(database_url, Product) == 1


async def test_a_rotation_from_the_command_line(database_url: str, stocked_shop: Path) -> None:
    rotating = _as(database_url, f"{NEW},{OLD}")
    again = await run_cli(rotating, "keys", "import", "GAME", str(stocked_shop))
    assert "added 0, skipped 3 duplicates" in again.stdout, again  # digests outlive the old key

    rewritten = await run_cli(rotating, "keys", "reencrypt")
    assert rewritten.returncode == 0, rewritten.stderr
    assert "rewrote 3 keys" in rewritten.stdout

    checked = await run_cli(_as(database_url, NEW), "check", "--full")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "ok   I5" in checked.stdout and "(3 of 3 checked: all)" in checked.stdout
    retired = await run_cli(_as(database_url, OLD), "check")
    assert retired.returncode != 0
    assert "does not match this database" in retired.stderr
    assert all(k not in again.stdout + rewritten.stdout + checked.stdout for k in KEYS)


async def test_a_running_shop_rotates_its_key_and_keeps_selling(
    launch: Launch, key_secret: str, tmp_path: Path
) -> None:
    new, keys = KeyVault.generate(), new_keys(30, "GAME")
    async with launch() as shop:
        await stock(shop, "GAME", keys)
        first = await checkout(shop, 3001, "GAME")
        await pay(shop, first)
        delivered = (await key_message(shop, 3001)).spoiler_texts()

    async with launch(key_encryption_key=f"{new},{key_secret}") as shop:
        rotating = asyncio.create_task(shop.cli("keys", "reencrypt"))
        for buyer in range(3002, 3007):  # buyers keep buying while the keys are rewritten
            sale = await checkout(shop, buyer, "GAME")
            await pay(shop, sale)
            assert len((await key_message(shop, buyer)).spoiler_texts()) == 1
        rewritten = await rotating
        assert rewritten.returncode == 0, rewritten.stderr
        old_keys = tmp_path / "old.txt"
        old_keys.write_text(f"{keys[0]}\n{keys[-1]}\n")
        again = await shop.cli("keys", "import", "GAME", str(old_keys))
        assert "added 0, skipped 2 duplicates" in again.stdout, again

    async with launch(key_encryption_key=new) as shop:  # the old key is gone
        since = time.monotonic()
        await press(shop.telegram, 3001, 1, f"k:{first.order_id}")  # "show my keys again"
        assert (await key_message(shop, 3001, since=since)).spoiler_texts() == delivered
