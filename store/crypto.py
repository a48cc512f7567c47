"""Keys at rest: encryption of key text and the digest used to find duplicates.

Key text is stored only as Fernet ciphertext (AES-128-CBC + HMAC-SHA256, from
`cryptography`). Duplicates are found on an HMAC-SHA256 of the normalised key under a
subkey derived from the same secret, so the database can enforce "never imported twice"
with a unique index without ever holding something a stolen copy could be searched with.
"""

from __future__ import annotations

import base64
import hmac
import unicodedata

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class KeyVaultError(Exception):
    """The encryption secret is malformed, or ciphertext does not match it."""


def normalise(key: str) -> str:
    """The canonical form of a key: what two equal keys have in common."""
    return unicodedata.normalize("NFC", key.strip())


class KeyVault:
    """Encrypts, decrypts and fingerprints key text with one secret."""

    def __init__(self, secret: str) -> None:
        try:
            self._fernet = Fernet(secret.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raise KeyVaultError(
                "KEY_ENCRYPTION_KEY is not a Fernet key (32 url-safe base64-encoded bytes); "
                "make one with: keyvend keygen"
            ) from None
        raw = base64.urlsafe_b64decode(secret)
        self._digest_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"keyvend key digest"
        ).derive(raw)

    @staticmethod
    def generate() -> str:
        return Fernet.generate_key().decode("ascii")

    def encrypt(self, key: str) -> bytes:
        return self._fernet.encrypt(key.encode("utf-8"))

    def decrypt(self, ciphertext: bytes) -> str:
        try:
            return self._fernet.decrypt(ciphertext).decode("utf-8")
        except InvalidToken:
            raise KeyVaultError(
                "a stored key cannot be decrypted: KEY_ENCRYPTION_KEY differs from the one "
                "used at import"
            ) from None

    def digest(self, key: str) -> bytes:
        return hmac.digest(self._digest_key, normalise(key).encode("utf-8"), "sha256")
