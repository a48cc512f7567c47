"""The key encryption key: from KEY_ENCRYPTION_KEY, or generated once for a local shop; and
the database's vault opened with it, refused in one line when the key does not match."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sqlalchemy.engine import make_url

from bot.settings import ConfigError, Settings
from store import vault
from store.crypto import KeyVault, KeyVaultError
from store.db import Database

log = logging.getLogger(__name__)


def encryption_key(settings: Settings) -> str:
    """KEY_ENCRYPTION_KEY, or for a local SQLite shop one generated once into a 0600 file."""
    if settings.key_encryption_key is not None:
        return settings.key_encryption_key.get_secret_value()
    database = make_url(settings.database_url).database if settings.is_sqlite else None
    if not database or database == ":memory:":
        raise ConfigError(
            "KEY_ENCRYPTION_KEY is not set. Generate one with `keyvend keygen` and put it in .env; "
            "every instance sharing the database needs the same value."
        )
    path = Path(database).resolve().with_name(Path(database).name + ".key")
    try:
        if path.exists():
            return path.read_text().strip()
        key = KeyVault.generate()
        # No mkdir: the key lives beside the database, whose folder SQLite will not create.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(key + "\n")
    except OSError as exc:
        raise ConfigError(
            f"cannot use the key file {path} ({exc.strerror}): the folder in DATABASE_URL "
            "must exist and be writable, or set KEY_ENCRYPTION_KEY"
        ) from None
    log.warning(
        "generated a key encryption key in %s: back it up, apart from the database's "
        "backups; without it the stored keys cannot be read",
        path,
    )
    return key


async def open_vault(db: Database, secrets: str) -> KeyVault:
    """The database's key vault; ConfigError if KEY_ENCRYPTION_KEY does not match it."""
    try:
        return await vault.open_vault(db, secrets)
    except KeyVaultError as exc:
        raise ConfigError(str(exc)) from None
