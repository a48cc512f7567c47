"""Keys at rest: encryption of key text and the digest used to find duplicates.

KEY_ENCRYPTION_KEY is a list of key encryption keys (KEKs), comma-separated: the first
encrypts, every one decrypts, so keys can be rotated while the shop runs (`keyvend keys
reencrypt` rewrites old ciphertexts under the first). Each KEK is 32 random bytes, written
as a Fernet key (url-safe base64, what `keyvend keygen` prints).

Ciphertext format, version 1: `0x01 | key id (4) | nonce (12) | AES-256-GCM(key text) + tag
(16)`. The version byte and key id are authenticated as associated data; the key id (the
first 4 bytes of the KEK's check value) lets decryption pick its KEK without trying each
one. The AES key is derived from the KEK with HKDF, never the KEK's bytes themselves.
Keys imported before the versioned format are Fernet tokens (AES-128-CBC + HMAC): they
start with the ASCII "g" of their base64 version byte 0x80, never with 0x01, and stay
readable with any listed KEK until `keyvend keys reencrypt` rewrites them.

The check value of a KEK (HKDF of it, 32 bytes) is what the database stores to refuse a
wrong KEY_ENCRYPTION_KEY at once (store/vault.py); it reveals nothing about the KEK.

Duplicates are found on an HMAC-SHA256 of the normalised key under a digest key, so the
database can enforce "never imported twice" with a unique index without holding anything a
stolen copy could be searched with. The digest key must outlive every KEK: after a
rotation a re-import of an old key must still produce the digest stored for it. So it is
fixed per database, derived once from the KEK that created the database (which is also
what every digest stored before this format was made with), and kept in the database
wrapped (encrypted) under the current first KEK; rotation rewraps it, and never changes
it. Rotating the digest key itself would mean re-digesting every key while imports check
uniqueness against the same column; the cost of not doing so: someone holding a retired
KEK *and* a copy of the database can test guesses of key text against the digests (but
cannot decrypt keys rewritten under the new KEK).
"""

from __future__ import annotations

import base64
import binascii
import copy
import hmac
import os
import unicodedata
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION_AESGCM = b"\x01"
_KEY_ID = 4
_NONCE = 12
_HEADER = len(VERSION_AESGCM) + _KEY_ID


class KeyVaultError(Exception):
    """The encryption secret is malformed, or ciphertext does not match it."""


def normalise(key: str) -> str:
    """The canonical form of a key: what two equal keys have in common."""
    return unicodedata.normalize("NFC", key.strip())


def _derive(raw: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(raw)


@dataclass(frozen=True, slots=True)
class _Kek:
    """One key encryption key and what is derived from it."""

    raw: bytes
    check: bytes  # stored in the database; its first bytes are the key id
    aead: AESGCM
    fernet: Fernet  # reads tokens written before the versioned format

    @property
    def id(self) -> bytes:
        return self.check[:_KEY_ID]

    @property
    def digest_key(self) -> bytes:
        """The digest key of a database this KEK creates (and of every pre-0003 database)."""
        return _derive(self.raw, b"keyvend key digest")

    @classmethod
    def parse(cls, secret: str, position: int) -> _Kek:
        try:
            fernet = Fernet(secret.encode("ascii"))
            raw = base64.urlsafe_b64decode(secret)
        except (ValueError, UnicodeEncodeError, binascii.Error):
            raise KeyVaultError(
                f"KEY_ENCRYPTION_KEY: key {position} of the list is not a key "
                "(32 url-safe base64-encoded bytes); make one with: keyvend keygen"
            ) from None
        return cls(
            raw=raw,
            check=_derive(raw, b"keyvend key check value"),
            aead=AESGCM(_derive(raw, b"keyvend aes-256-gcm key")),
            fernet=fernet,
        )


class KeyVault:
    """Encrypts, decrypts and fingerprints key text with a list of key encryption keys.

    `KeyVault(secrets)` alone digests under the first KEK's derived digest key: right for
    a database that KEK creates. A database's own vault comes from store.vault.open_vault,
    which passes the digest key the database keeps.
    """

    def __init__(self, secrets: str, *, digest_key: bytes | None = None) -> None:
        keks = [_Kek.parse(s.strip(), n) for n, s in enumerate(secrets.split(","), 1)]
        if len({k.id for k in keks}) != len(keks):
            raise KeyVaultError("KEY_ENCRYPTION_KEY lists the same key twice")
        self._keks = keks
        self._by_id = {k.id: k for k in keks}
        self._header = VERSION_AESGCM + keks[0].id
        self._fernet = MultiFernet([k.fernet for k in keks])
        self._digest_key = digest_key if digest_key is not None else keks[0].digest_key

    @staticmethod
    def generate() -> str:
        return Fernet.generate_key().decode("ascii")

    # ------------------------------------------------------------ key text

    def encrypt(self, key: str) -> bytes:
        return self.seal(key.encode("utf-8"))

    def decrypt(self, ciphertext: bytes) -> str:
        return self.open(ciphertext).decode("utf-8")

    def digest(self, key: str) -> bytes:
        return hmac.digest(self._digest_key, normalise(key).encode("utf-8"), "sha256")

    # ------------------------------------------------------------ bytes, and rotation

    def seal(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return self._header + nonce + self._keks[0].aead.encrypt(nonce, plaintext, self._header)

    def open(self, ciphertext: bytes) -> bytes:
        ciphertext = bytes(ciphertext)
        if ciphertext[:1] == VERSION_AESGCM:
            kek = self._by_id.get(ciphertext[1:_HEADER])
            if kek is None:
                raise KeyVaultError(
                    f"a stored key was encrypted with key id {ciphertext[1:_HEADER].hex()}, "
                    "which KEY_ENCRYPTION_KEY does not list"
                )
            plaintext = _open_v1(kek, ciphertext)
            if plaintext is None:
                raise KeyVaultError("a stored key is damaged: its ciphertext does not verify")
            return plaintext
        try:
            return self._fernet.decrypt(ciphertext)
        except InvalidToken:
            raise KeyVaultError(
                "a stored key cannot be decrypted: KEY_ENCRYPTION_KEY does not list the key "
                "used at import"
            ) from None

    def is_current(self, ciphertext: bytes) -> bool:
        """Whether `ciphertext` is already under the first KEK (rotation leaves it alone)."""
        return bytes(ciphertext[:_HEADER]) == self._header

    @property
    def current_header(self) -> bytes:
        """The first bytes of every ciphertext made under the first KEK."""
        return self._header

    @property
    def digest_key(self) -> bytes:
        """The key of the duplicate digests; the database keeps it wrapped under a KEK."""
        return self._digest_key

    @property
    def check_value(self) -> bytes:
        """The first KEK's check value: what the database records as its current KEK."""
        return self._keks[0].check

    @property
    def key_ids(self) -> list[str]:
        """The listed KEKs' ids, for messages (an id says nothing about its key)."""
        return [k.id.hex() for k in self._keks]

    def listed(self, check_value: bytes) -> bool:
        return any(hmac.compare_digest(k.check, check_value) for k in self._keks)

    def digest_key_for(self, key: str, digest: bytes) -> bytes | None:
        """The digest key, among those the listed KEKs derive, that gives `key` this
        stored digest (None if none does): how a database from before the vault record
        finds the digest key its keys were imported with."""
        text = normalise(key).encode("utf-8")
        for kek in self._keks:
            if hmac.compare_digest(hmac.digest(kek.digest_key, text, "sha256"), bytes(digest)):
                return kek.digest_key
        return None

    def __reduce__(self) -> tuple[object, tuple[str, bytes]]:
        # A process pool (big imports encrypted off the event loop) gets an equal vault.
        secrets = ",".join(base64.urlsafe_b64encode(k.raw).decode("ascii") for k in self._keks)
        return _rebuilt, (secrets, self._digest_key)

    def with_digest_key(self, digest_key: bytes) -> KeyVault:
        """This vault, digesting under a database's own digest key."""
        vault = copy.copy(self)
        vault._digest_key = digest_key
        return vault


def _rebuilt(secrets: str, digest_key: bytes) -> KeyVault:
    return KeyVault(secrets, digest_key=digest_key)


def _open_v1(kek: _Kek, ciphertext: bytes) -> bytes | None:
    nonce, sealed = ciphertext[_HEADER : _HEADER + _NONCE], ciphertext[_HEADER + _NONCE :]
    try:
        return kek.aead.decrypt(nonce, sealed, ciphertext[:_HEADER])
    except InvalidTag:
        return None
