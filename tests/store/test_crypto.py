"""The ciphertext format and the key list, without a database: what store/crypto.py promises."""

from __future__ import annotations

import pickle

import pytest
from cryptography.fernet import Fernet

from store.crypto import VERSION_AESGCM, KeyVault, KeyVaultError

A, B, C = KeyVault.generate(), KeyVault.generate(), KeyVault.generate()


def test_a_key_is_sealed_with_aes_gcm_under_the_first_key_and_read_back() -> None:
    vault = KeyVault(f"{A},{B}")
    ciphertext = vault.encrypt("GAME-1234-ÄÖ-{order}")

    assert ciphertext[:1] == VERSION_AESGCM
    assert ciphertext[1:5] == KeyVault(A).check_value[:4]  # the key id names the first key
    assert len(ciphertext) == 1 + 4 + 12 + len("GAME-1234-ÄÖ-{order}".encode()) + 16
    assert vault.encrypt("GAME-1234-ÄÖ-{order}") != ciphertext  # a fresh nonce each time
    assert vault.decrypt(ciphertext) == "GAME-1234-ÄÖ-{order}"
    assert KeyVault(f"{C},{B},{A}").decrypt(ciphertext) == "GAME-1234-ÄÖ-{order}"


def test_a_tampered_or_foreign_ciphertext_is_refused_without_showing_the_key() -> None:
    ciphertext = KeyVault(A).encrypt("SECRET-KEY")
    flipped = ciphertext[:-1] + bytes([ciphertext[-1] ^ 1])
    moved = ciphertext[:1] + KeyVault(B).check_value[:4] + ciphertext[5:]  # header is bound

    for broken, vault in ((flipped, KeyVault(A)), (moved, KeyVault(f"{A},{B}"))):
        with pytest.raises(KeyVaultError) as refused:
            vault.decrypt(broken)
        assert "SECRET" not in str(refused.value)
    with pytest.raises(KeyVaultError, match="key id"):
        KeyVault(B).decrypt(ciphertext)


def test_fernet_tokens_from_before_the_format_stay_readable_with_any_listed_key() -> None:
    token = Fernet(B.encode()).encrypt(b"OLD-KEY-1")
    vault = KeyVault(f"{A},{B}")
    assert vault.decrypt(token) == "OLD-KEY-1"
    assert not vault.is_current(token)
    with pytest.raises(KeyVaultError):
        KeyVault(A).decrypt(token)


def test_digests_follow_the_database_not_the_first_key() -> None:
    created = KeyVault(A)
    rotated = KeyVault(f"{B},{A}").with_digest_key(created.digest_key)
    assert rotated.digest(" KEY-1 ") == created.digest("KEY-1")
    assert KeyVault(f"{B},{A}").digest_key_for("KEY-1", created.digest("KEY-1")) == (
        created.digest_key
    )
    assert KeyVault(B).digest_key_for("KEY-1", created.digest("KEY-1")) is None


def test_a_vault_sent_to_another_process_encrypts_and_digests_alike() -> None:
    vault = KeyVault(f"{B},{A}").with_digest_key(KeyVault(A).digest_key)
    copy = pickle.loads(pickle.dumps(vault))
    assert copy.decrypt(vault.encrypt("K-1")) == vault.decrypt(copy.encrypt("K-1")) == "K-1"
    assert copy.digest("K-1") == vault.digest("K-1") == KeyVault(A).digest("K-1")
    assert copy.is_current(vault.encrypt("K-1"))


@pytest.mark.parametrize(
    ("secrets", "reason"),
    [
        ("not-a-key", "key 1 of the list is not a key"),
        (f"{A},", "key 2 of the list is not a key"),
        (f"{A},{A[:-2]}", "key 2 of the list is not a key"),
        (f"{A}, {A}", "lists the same key twice"),
    ],
    # The keys are made at import: ids of their own keep parallel workers' collections equal.
    ids=["not-a-key", "empty-second", "truncated-second", "repeated"],
)
def test_a_malformed_key_list_is_refused_in_one_line_without_echoing_it(
    secrets: str, reason: str
) -> None:
    with pytest.raises(KeyVaultError, match=reason) as refused:
        KeyVault(secrets)
    assert A not in str(refused.value) and "\n" not in str(refused.value)
