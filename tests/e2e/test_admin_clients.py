"""Business clients managed from the admin chat: /clients and /client add|topup|token|disable.

The admin and a stranger are FakeTelegram users driving the real app; each action is proven
on the database (clients, ledger and audit rows) and, for tokens, over the real API: the
token shown in the chat authenticates, a revoked or disabled one does not.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from store.models import AuditEntry, Client, LedgerEntry
from tests.e2e.conftest import ADMIN, Shop
from tests.e2e.helpers import (
    UNKNOWN_COMMAND,
    new_keys,
    reply,
    rows,
    scalar,
    stock,
    text,
    wait_until,
)
from tests.support.api import ApiClient

STRANGER = 3002


async def _client(shop: Shop, name: str) -> Client | None:
    return await scalar(shop, select(Client).where(Client.name == name))


async def _audited(shop: Shop) -> list[tuple]:
    return await rows(
        shop,
        select(AuditEntry.admin_id, AuditEntry.action, AuditEntry.detail).order_by(AuditEntry.id),
    )


async def _add(shop: Shop, command: str):
    """Send `/client add ...` as the admin; the message holding the new token."""
    await reply(shop.telegram, ADMIN, command)
    return await shop.telegram.wait_for(
        lambda m: m.chat_id == ADMIN and "shown only now" in text(m)
    )


def _token(message) -> str:
    found = re.findall(r"kv_\S+", text(message))
    assert len(found) == 1, text(message)
    return found[0]


async def test_an_admin_adds_tops_up_reissues_and_disables_a_client(
    launch, database_url, caplog
) -> None:
    async with launch(database_url) as shop:
        await stock(shop, "GAME", new_keys(3, "GAME"), price="1.00")
        added = await reply(
            shop.telegram,
            ADMIN,
            "/client add acme --balance 100.00 --currency usd --credit=20 "
            "--webhook https://acme.example/hook --email ops@acme.example --review-over 500",
        )
        secret = await shop.telegram.wait_for(
            lambda m: m.chat_id == ADMIN and "shown only now" in text(m)
        )
        first = ApiClient(shop, "acme", _token(secret))
        before = await first.call("GET", "/products")

        topped = await reply(shop.telegram, ADMIN, "/client topup acme 50.5")
        listing = await reply(shop.telegram, ADMIN, "/clients")
        await reply(shop.telegram, ADMIN, "/client token acme")
        renewed = await shop.telegram.wait_for(
            lambda m: m.chat_id == ADMIN and "shown only now" in text(m) and m is not secret
        )
        second = ApiClient(shop, "acme", _token(renewed))
        revoked = await first.call("GET", "/products")
        works = await second.call("GET", "/products")
        disabled = await reply(shop.telegram, ADMIN, "/client disable acme")
        after = await second.call("GET", "/products")
        listed_after = await reply(shop.telegram, ADMIN, "/clients")

        acme = await _client(shop, "acme")
        ledger = await rows(
            shop, select(LedgerEntry.kind, LedgerEntry.amount_minor).order_by(LedgerEntry.id)
        )
        audited = await _audited(shop)

    assert text(added) == "Client acme added: balance 100.00 USD, credit 20.00 USD."
    assert not secret.protect_content  # the admin must be able to copy it
    assert "Webhook signing secret:" in text(secret) and "whsec_" in text(secret)
    assert before.status == 200 and [p["sku"] for p in before.body["data"]] == ["GAME"]
    assert works.status == 200
    assert first.token not in caplog.text and second.token not in caplog.text
    assert revoked.status == 401 and after.status == 401
    assert text(topped) == "acme: balance now 150.50 USD."
    assert text(listing) == "Clients\nacme — balance 150.50 USD, credit 20.00 USD · active"
    assert text(disabled) == "acme is disabled: its token is refused from now on."
    assert text(listed_after).endswith("· disabled")
    assert (acme.balance_minor, acme.credit_minor, acme.review_over) == (15_050, 2_000, 500)
    assert (acme.webhook_url, acme.email, acme.disabled) == (
        "https://acme.example/hook",
        "ops@acme.example",
        True,
    )
    assert ledger == [("topup", 10_000), ("topup", 5_050)]
    assert [a for a in audited if a[1].startswith("client.")] == [
        (ADMIN, "client.add", "acme"),
        (ADMIN, "client.topup", "acme 5050"),
        (ADMIN, "client.token", "acme"),
        (ADMIN, "client.disable", "acme"),
    ]


async def test_the_token_message_is_deleted_after_the_key_message_ttl(launch) -> None:
    async with launch(key_message_ttl=timedelta(seconds=1)) as shop:
        await stock(shop, "GAME", new_keys(1, "GAME"))
        await reply(shop.telegram, ADMIN, "/client add acme")
        secret = await shop.telegram.wait_for(
            lambda m: m.chat_id == ADMIN and "shown only now" in text(m)
        )
        await wait_until(
            lambda: (ADMIN, secret.message_id) in shop.telegram.deleted,
            what="the token message deleted",
        )
        assert await _client(shop, "acme") is not None


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        ("/client add beta --balance -5", "balance"),
        ("/client add beta --colour red", "unknown option --colour"),
        ("/client add beta --balance", "--balance needs a value"),
        ("/client add beta --review-over many", "--review-over must be a whole number"),
        ("/client add beta --webhook ftp://x", "webhook"),
        ("/client add bad/name", "client name"),
        ("/client add acme", "a client named acme exists already"),
        ("/client topup nobody 5", "no client named nobody"),
        ("/client topup acme lots", "amount"),
        ("/client frobnicate", "Usage: /client add NAME"),
        ("/client", "Usage: /client add NAME"),
    ],
)
async def test_bad_input_gets_a_one_line_reason_and_changes_nothing(
    shop: Shop, command: str, answer: str
) -> None:
    await _add(shop, "/client add acme --balance 10")
    before = await _audited(shop)

    said = await reply(shop.telegram, ADMIN, command)

    assert answer in text(said) and "\n" not in text(said)
    assert await _audited(shop) == before
    acme = await _client(shop, "acme")
    assert acme.balance_minor == 1_000 and acme.disabled is False
    assert await scalar(shop, select(Client.id).where(Client.name != "acme")) is None


@pytest.mark.parametrize(
    "command",
    [
        "/clients",
        "/client add evil --balance 1000",
        "/client topup acme 1000",
        "/client token acme",
        "/client disable acme",
    ],
)
async def test_a_non_admin_gets_the_unknown_command_answer(shop: Shop, command: str) -> None:
    await _add(shop, "/client add acme --balance 10")
    before_token = (await _client(shop, "acme")).token_hash

    answer = await reply(shop.telegram, STRANGER, command)

    assert text(answer) == UNKNOWN_COMMAND
    acme = await _client(shop, "acme")
    assert (acme.balance_minor, acme.disabled, acme.token_hash) == (1_000, False, before_token)
    assert await _client(shop, "evil") is None
    assert await rows(shop, select(AuditEntry).where(AuditEntry.admin_id == STRANGER)) == []
