"""Keys at rest on SQLite and PostgreSQL: the database refuses a wrong key, and keys rotate.

A database records the key it expects (store/vault.py): a different KEY_ENCRYPTION_KEY is
refused before it can import keys a second time under digests nothing matches. Rotation
(new key first, old after) moves the record to the new key, keeps duplicate digests
working, and `reencrypt` rewrites every key under it — resumably, while sales go on, never
touching a key's status or order. Keys stored as Fernet tokens before the versioned format
stay readable, and a database from before the record is adopted only by its own key.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, update

from store import inventory, orders
from store.check import check
from store.crypto import KeyVault, KeyVaultError
from store.db import Database
from store.models import Download, Key, KeyStatus, VaultRecord
from store.vault import open_vault, reencrypt
from tests.store.conftest import REFUND, FakeGateway, invariants_hold, open_order, scalar, stocked

OLD, NEW, STRANGER = KeyVault.generate(), KeyVault.generate(), KeyVault.generate()


async def restock(db: Database, vault: KeyVault, *keys: str) -> inventory.RestockReport:
    return await inventory.restock(
        db, vault, "GAME", inventory.parse_keys("\n".join(keys)), source="test"
    )


async def stored(db: Database) -> list[tuple[int, bytes, str, int | None]]:
    async def work(session):
        rows = await session.execute(
            select(Key.id, Key.ciphertext, Key.status, Key.order_id).order_by(Key.id)
        )
        return [(i, bytes(c), s, o) for i, c, s, o in rows]

    return await db.read(work)


async def texts(db: Database, vault: KeyVault) -> list[str]:
    return [vault.decrypt(c) for _, c, _, _ in await stored(db)]


def _one_line_without_secrets(exc: pytest.ExceptionInfo[KeyVaultError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    for secret in (OLD, NEW, STRANGER):
        assert secret not in message
    return message


# ---------------------------------------------------------------- a wrong key


async def test_a_wrong_key_is_refused_before_it_imports_anything(db: Database) -> None:
    vault = await open_vault(db, OLD)
    await stocked(db, vault, keys=5)

    with pytest.raises(KeyVaultError) as refused:
        await open_vault(db, STRANGER)

    assert "does not match this database" in _one_line_without_secrets(refused)
    assert len(await stored(db)) == 5
    assert (await open_vault(db, OLD)).digest("GAME-KEY-00000") == vault.digest(
        "GAME-KEY-00000"
    )  # the right key still opens it, unchanged


async def test_the_first_open_of_an_empty_database_records_its_key(db: Database) -> None:
    assert await scalar(db, select(VaultRecord.id)) is None
    await asyncio.gather(*(open_vault(db, OLD) for _ in range(5)))  # racing first starts
    check_value = await scalar(db, select(VaultRecord.key_check))
    assert bytes(check_value) == KeyVault(OLD).check_value
    assert OLD.encode() not in bytes(await scalar(db, select(VaultRecord.digest_key)))
    with pytest.raises(KeyVaultError):
        await open_vault(db, STRANGER)


async def _legacy_database(db: Database, secret: str) -> list[str]:
    """Keys imported before the vault record: Fernet tokens, digests under `secret`."""
    await stocked(db, KeyVault(secret), keys=4)
    fernet = Fernet(secret.encode())
    legacy = KeyVault(secret)

    async def to_fernet(session):
        for key_id, ciphertext in (await session.execute(select(Key.id, Key.ciphertext))).all():
            token = fernet.encrypt(legacy.decrypt(ciphertext).encode())
            await session.execute(update(Key).where(Key.id == key_id).values(ciphertext=token))

    await db.write(to_fernet)
    return await texts(db, legacy)


async def test_a_database_from_before_the_record_is_adopted_only_by_its_own_key(
    db: Database,
) -> None:
    keys = await _legacy_database(db, OLD)

    with pytest.raises(KeyVaultError) as refused:
        await open_vault(db, STRANGER)
    _one_line_without_secrets(refused)
    assert await scalar(db, select(VaultRecord.id)) is None  # nothing recorded for a wrong key

    vault = await open_vault(db, OLD)
    assert await texts(db, vault) == keys  # Fernet tokens stay readable
    assert (await restock(db, vault, keys[0], "NEW-1")).duplicates == 1
    with pytest.raises(KeyVaultError):
        await open_vault(db, STRANGER)


# ---------------------------------------------------------------- rotation


async def test_rotation_keeps_duplicates_caught_and_ends_with_the_new_key_alone(
    db: Database, gateway: FakeGateway
) -> None:
    keys = await _legacy_database(db, OLD)  # Fernet tokens: rotation rewrites them too
    await open_vault(db, OLD)
    sold = await open_order(db, gateway, 1, buyer=7)
    await orders.fulfil(db, gateway.payment(sold), REFUND)
    await open_order(db, gateway, 1, buyer=8)  # a reservation, left open
    link = Download(  # a business client's download link: sealed with the vault too
        order_id=sold,
        token_hash=b"h" * 32,
        token_ciphertext=KeyVault(OLD).encrypt("dl_live-link"),
        created_at=datetime.now(UTC),
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )

    async def add_link(session):
        session.add(link)

    await db.write(add_link)
    before = [(i, s, o) for i, _, s, o in await stored(db)]

    rotating = await open_vault(db, f"{NEW},{OLD}")
    with pytest.raises(KeyVaultError) as refused:  # the record moved: the old key alone could
        await open_vault(db, OLD)  # not read what is encrypted from now on
    _one_line_without_secrets(refused)
    assert (await restock(db, rotating, *keys, "FRESH-1")).added == 1  # old keys still caught

    report = await reencrypt(db, rotating, batch=2)

    assert (report.rewritten, report.remaining) == (len(keys) + 1, 0)
    assert all(rotating.is_current(c) for _, c, _, _ in await stored(db))
    assert [(i, s, o) for i, _, s, o in await stored(db)][: len(before)] == before
    done = await open_vault(db, NEW)
    assert done.decrypt(await scalar(db, select(Download.token_ciphertext))) == "dl_live-link"
    assert await texts(db, done) == [*keys, "FRESH-1"]
    assert (await restock(db, done, keys[1], "FRESH-1", "FRESH-2")).added == 1
    assert (await reencrypt(db, done)).rewritten == 0  # a rerun has nothing left to do
    await invariants_hold(db)


async def test_an_interrupted_reencryption_carries_on_when_run_again(db: Database) -> None:
    await stocked(db, await open_vault(db, OLD), keys=30)
    rotating = await open_vault(db, f"{NEW},{OLD}")

    def crash(total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await reencrypt(db, rotating, batch=7, progress=crash)
    assert sum(rotating.is_current(c) for _, c, _, _ in await stored(db)) == 7

    report = await reencrypt(db, rotating, batch=7)
    assert (report.rewritten, report.remaining) == (23, 0)
    assert await texts(db, await open_vault(db, NEW)) == [f"GAME-KEY-{i:05d}" for i in range(30)]


async def test_reencryption_while_buyers_buy_breaks_no_sale(
    db: Database, gateway: FakeGateway
) -> None:
    product = await stocked(db, await open_vault(db, OLD), keys=120)
    rotating = await open_vault(db, f"{NEW},{OLD}")

    async def buy(buyer: int) -> None:
        order = await open_order(db, gateway, product.id, buyer, quantity=2)
        await orders.fulfil(db, gateway.payment(order), REFUND)

    results = await asyncio.gather(
        reencrypt(db, rotating, batch=5), *(buy(100 + b) for b in range(30))
    )

    assert results[0].remaining == 0
    rows = await stored(db)
    assert all(rotating.is_current(c) for _, c, _, _ in rows)
    assert sorted(await texts(db, await open_vault(db, NEW))) == [
        f"GAME-KEY-{i:05d}" for i in range(120)
    ]
    assert sum(s == KeyStatus.SOLD for _, _, s, _ in rows) == 60
    await invariants_hold(db)


# ---------------------------------------------------------------- keyvend check


async def test_check_counts_keys_that_do_not_decrypt_without_showing_them(db: Database) -> None:
    vault = await open_vault(db, OLD)
    await stocked(db, vault, keys=40)
    assert all(f.ok for f in await check(db, max_attempts=12, vault=vault, sample=None))

    stranger = KeyVault(STRANGER)

    async def damage(session):
        await session.execute(
            update(Key).where(Key.id == 3).values(ciphertext=stranger.encrypt("GAME-KEY-00002"))
        )
        await session.execute(update(Key).where(Key.id == 9).values(digest=b"\0" * 32))

    await db.write(damage)

    full = {f.invariant: f for f in await check(db, max_attempts=12, vault=vault, sample=None)}
    assert full["I5"].violations == ("2 of 40 keys failed", "key id 3", "key id 9")
    assert "GAME-KEY" not in repr(full["I5"])
    sampled = {f.invariant: f for f in await check(db, max_attempts=12, vault=vault, sample=10)}
    assert "10 of 40" in sampled["I5"].description
