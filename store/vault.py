"""The database's key encryption key: refusing a wrong one, and rotating to a new one.

A database keeps one VaultRecord: the check value of the KEK it expects and its digest key
wrapped under that KEK (store/crypto.py says why the digest key never changes).

`open_vault` is how every command gets its KeyVault. A KEY_ENCRYPTION_KEY is accepted when
it lists the recorded KEK. When that KEK is not the first of the list, a rotation has begun:
the record moves to the first KEK (digest key rewrapped, check value replaced, one
conditional update) before anything is encrypted under it, so from then on a list without
the new KEK is refused — it could not read what is written next. An empty database records
the first KEK; a database from before the record is adopted only if a listed KEK decrypts
its newest key and a listed KEK's digest key reproduces that key's stored digest.

`reencrypt` rewrites, batch by batch, every sealed value not yet under the first KEK: the
keys, and the business API's download tokens (SEALED lists them). It changes the
ciphertext column only, with an update conditional on the old ciphertext, so a concurrent
sale or reveal (which reads the old ciphertext, still readable by the listed old KEK) is
never broken and a key's status and order are never touched. On PostgreSQL a key locked by
a sale in progress is skipped, not waited for, and taken by the next pass. Each batch is
its own transaction: an interrupted run loses nothing and a rerun carries on.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from store.buyers import dialect_insert
from store.crypto import KeyVault, KeyVaultError
from store.db import Database
from store.models import Download, Key, VaultRecord

log = logging.getLogger(__name__)

_RECORD_ID = 1
_OPEN_ATTEMPTS = 3
_PASSES = 3
BATCH = 500
# Every column holding a value sealed with the vault: what a rotation must rewrite.
SEALED = (Key.ciphertext, Download.token_ciphertext)


@dataclass(frozen=True, slots=True)
class Reencryption:
    rewritten: int
    remaining: int  # values still under an older KEK: in use by a sale during every pass


async def open_vault(db: Database, secrets: str, *, now: datetime | None = None) -> KeyVault:
    """The vault for this database, or KeyVaultError if `secrets` does not match it."""
    keyring = KeyVault(secrets)
    for _ in range(_OPEN_ATTEMPTS):
        record = await db.read(_record)
        if record is None:
            digest_key = await db.read(_adopted_digest_key, keyring)
            await db.write(_record_first, keyring, digest_key, now or datetime.now(UTC))
            continue
        check, wrapped = record
        if not keyring.listed(check):
            raise KeyVaultError(
                f"KEY_ENCRYPTION_KEY does not match this database: it expects key id "
                f"{check[:4].hex()}, the setting lists {', '.join(keyring.key_ids)} "
                "(during a rotation list the new key first and the old one after it)"
            )
        vault = keyring.with_digest_key(keyring.open(wrapped))
        if hmac.compare_digest(check, keyring.check_value):
            return vault
        if await db.write(_move_to_first, vault, check, now or datetime.now(UTC)):
            log.warning(
                "the database now expects key encryption key id %s: keys are encrypted under "
                "it from now on; `keyvend keys reencrypt` rewrites the older ones",
                keyring.key_ids[0],
            )
            return vault
    raise KeyVaultError(
        "KEY_ENCRYPTION_KEY: the database's key record kept changing while opening it; "
        "are other instances starting with the keys listed in another order?"
    )


async def _record(session: AsyncSession) -> tuple[bytes, bytes] | None:
    row = (
        await session.execute(
            select(VaultRecord.key_check, VaultRecord.digest_key).where(
                VaultRecord.id == _RECORD_ID
            )
        )
    ).first()
    return None if row is None else (bytes(row[0]), bytes(row[1]))


async def _adopted_digest_key(session: AsyncSession, keyring: KeyVault) -> bytes:
    """The digest key of a database without a record: the first KEK's if it has no keys,
    else the one its keys were imported with — if this key list can show which."""
    newest = (
        await session.execute(select(Key.ciphertext, Key.digest).order_by(Key.id.desc()).limit(1))
    ).first()
    if newest is None:
        return keyring.digest_key
    try:
        key = keyring.decrypt(newest.ciphertext)
    except KeyVaultError:
        raise KeyVaultError(
            "KEY_ENCRYPTION_KEY does not match this database: it cannot decrypt the keys "
            "already stored here"
        ) from None
    digest_key = keyring.digest_key_for(key, newest.digest)
    if digest_key is None:
        raise KeyVaultError(
            "KEY_ENCRYPTION_KEY decrypts this database's keys but does not list the key the "
            "database was created with, which its duplicate check needs: list that key too"
        )
    return digest_key


async def _record_first(
    session: AsyncSession, keyring: KeyVault, digest_key: bytes, now: datetime
) -> None:
    # Two first starts racing: one insert wins, the other re-reads and is checked against it.
    await session.execute(
        dialect_insert(session)(VaultRecord)
        .values(
            id=_RECORD_ID,
            key_check=keyring.check_value,
            digest_key=keyring.seal(digest_key),
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=[VaultRecord.id])
    )


async def _move_to_first(session: AsyncSession, vault: KeyVault, was: bytes, now: datetime) -> bool:
    result = await session.execute(
        VaultRecord.__table__.update()
        .where(VaultRecord.id == _RECORD_ID, VaultRecord.key_check == was)
        .values(
            key_check=vault.check_value,
            digest_key=vault.seal(vault.digest_key),
            updated_at=now,
        )
    )
    return result.rowcount == 1


# ---------------------------------------------------------------- rotation


async def reencrypt(
    db: Database,
    vault: KeyVault,
    *,
    batch: int = BATCH,
    progress: Callable[[int], None] | None = None,
) -> Reencryption:
    """Rewrite every sealed value not under the first KEK; `progress` hears the running
    total."""
    rewritten = 0
    for _ in range(_PASSES):
        for column in SEALED:
            after: int | None = 0
            while after is not None:
                count, after = await db.write(_rewrite_batch, vault, column, after, batch)
                rewritten += count
                if count and progress is not None:
                    progress(rewritten)
        remaining = sum([await db.read(_count_stale, vault, column) for column in SEALED])
        if not remaining:
            break
    return Reencryption(rewritten=rewritten, remaining=remaining)


def _stale(vault: KeyVault, column):
    header = vault.current_header
    return func.substr(column, 1, len(header)) != header


async def _rewrite_batch(
    session: AsyncSession, vault: KeyVault, column, after: int, batch: int
) -> tuple[int, int | None]:
    table, row_id = column.class_.__table__, column.class_.id
    rows = (
        await session.execute(
            select(row_id, column)
            .where(row_id > after, _stale(vault, column))
            .order_by(row_id)
            .limit(batch)
            # A row a sale holds is skipped, not waited for: the next pass takes it.
            .with_for_update(skip_locked=True)
        )
    ).all()
    if not rows:
        return 0, None
    count = 0
    for found_id, old in rows:
        try:
            new = vault.seal(vault.open(old))
        except KeyVaultError as exc:
            raise KeyVaultError(f"{table.name} id {found_id}: {exc}") from None
        result = await session.execute(
            table.update()
            .where(table.c.id == found_id, table.c[column.key] == old)
            .values({column.key: new})
        )
        count += result.rowcount
    return count, rows[-1].id


async def _count_stale(session: AsyncSession, vault: KeyVault, column) -> int:
    return await session.scalar(
        select(func.count()).select_from(column.class_).where(_stale(vault, column))
    )
