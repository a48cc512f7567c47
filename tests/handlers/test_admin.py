"""Admin commands through the chat: restock by paste or file, /cancel, /stats, and that
nobody else can use them.

The shop runs for real; the admin and a buyer are FakeTelegram users. What a restock did is
read back from the database (exactly the new keys, encrypted) and from what FakeTelegram
recorded (the report, and the deleted message that carried the keys).
"""

from __future__ import annotations

import time
import warnings

import pytest
from sqlalchemy import func, select

from handlers.admin import MAX_UPLOAD
from store import inventory
from store.models import AuditEntry, ImportBatch, KeyStatus
from tests.e2e.conftest import ADMIN, Shop
from tests.e2e.helpers import (
    UNKNOWN_COMMAND,
    checkout,
    key_message,
    key_statuses,
    pay,
    reply,
    scalar,
    sent_since,
    stock,
    stored_keys,
    text,
)

BUYER = 3001
STRANGER = 3002
REPORT = "added"  # every restock report says "added N, skipped M duplicates, rejected K lines"


async def _start_restock(shop: Shop, sku: str = "GAME") -> None:
    answer = await reply(shop.telegram, ADMIN, f"/restock {sku}")
    assert f"Send the keys for {sku}" in text(answer), text(answer)


async def _send_keys(
    shop: Shop, content: str = "", *, document: tuple[str, bytes] | None = None
) -> tuple[str, int]:
    """Send keys (pasted or as a file) in a restock; return the report and the message's id."""
    since = time.monotonic()
    update = shop.telegram.message(ADMIN, content, document=document)
    seen = sent_since(shop.telegram, ADMIN, since)
    report = await shop.telegram.wait_for(lambda m: seen(m) and REPORT in text(m))
    return text(report), update["message"]["message_id"]


async def _sold_and_available(shop: Shop) -> None:
    """GAME with two keys imported earlier: OLD-1 sold to a buyer, OLD-2 still on sale."""
    await stock(shop, "GAME", ["OLD-1", "OLD-2"])
    await pay(shop, await checkout(shop, BUYER, "GAME"))
    assert (await key_message(shop, BUYER)).spoiler_texts() == ["OLD-1"]


def _assert_encrypted(stored: list[tuple[bytes, str]]) -> None:
    for ciphertext, plaintext in stored:
        assert plaintext.encode() not in ciphertext


async def test_pasted_keys_are_imported_once_and_the_message_is_deleted(shop: Shop) -> None:
    await _sold_and_available(shop)
    await _start_restock(shop)
    pasted = "\n".join(
        [
            "NEW-1",
            "NEW-2",
            "   NEW-1   ",  # the same key again, with spaces around it
            "OLD-1",  # imported earlier and already sold
            "OLD-2",  # imported earlier, still on sale
            "",
            "X" * 1001,
            "BAD\x07KEY",  # a control character: not something a human can redeem
            "NEW-3",
        ]
    )

    report, message_id = await _send_keys(shop, pasted)

    assert "added 3, skipped 3 duplicates, rejected 3 lines" in report
    assert "1 empty, 1 over 1,000 characters, 1 binary" in report
    assert "Available now: 4" in report
    stored = await stored_keys(shop, "GAME")
    assert [key for _, key in stored] == ["OLD-1", "OLD-2", "NEW-1", "NEW-2", "NEW-3"]
    _assert_encrypted(stored)
    assert await key_statuses(shop, "GAME") == {KeyStatus.SOLD: 1, KeyStatus.AVAILABLE: 4}
    assert (ADMIN, message_id) in shop.telegram.deleted


async def test_keys_on_the_lines_after_the_command_are_imported(shop: Shop) -> None:
    await stock(shop, "GAME", ["OLD-1"])

    report, message_id = await _send_keys(
        shop, "/restock GAME\nINLINE-1\nINLINE-2\nOLD-1\nINLINE-1"
    )

    assert "added 2, skipped 2 duplicates, rejected 0 lines" in report
    stored = await stored_keys(shop, "GAME")
    assert [key for _, key in stored] == ["OLD-1", "INLINE-1", "INLINE-2"]
    _assert_encrypted(stored)
    assert (ADMIN, message_id) in shop.telegram.deleted


async def test_a_txt_upload_is_imported_with_bad_lines_rejected(shop: Shop) -> None:
    await _sold_and_available(shop)
    await _start_restock(shop)
    content = (
        b"\xef\xbb\xbfTXT-1\r\nTXT-2\nOLD-1\n\xff\xfe not utf-8\nNUL\x00KEY\n\n"
        + b"Y" * 1001
        + b"\nTXT-1\n"
    )

    report, message_id = await _send_keys(shop, document=("keys.txt", content))

    assert "added 2, skipped 2 duplicates, rejected 4 lines" in report
    assert "1 empty, 1 over 1,000 characters, 1 binary, 1 not UTF-8" in report
    stored = await stored_keys(shop, "GAME")
    assert [key for _, key in stored] == ["OLD-1", "OLD-2", "TXT-1", "TXT-2"]
    _assert_encrypted(stored)
    assert (ADMIN, message_id) in shop.telegram.deleted


async def test_a_csv_upload_takes_the_first_column_and_skips_the_header(shop: Shop) -> None:
    await stock(shop, "GAME", ["OLD-1"])
    await _start_restock(shop)
    content = (
        b'key,note\nCSV-1,first\n"CSV-2, with comma",second\nOLD-1,again\nCSV-1,twice\n,no key\n'
    )

    report, message_id = await _send_keys(shop, document=("stock.CSV", content))

    assert "added 2, skipped 2 duplicates, rejected 1 lines" in report
    stored = await stored_keys(shop, "GAME")
    assert [key for _, key in stored] == ["OLD-1", "CSV-1", "CSV-2, with comma"]
    _assert_encrypted(stored)
    assert (ADMIN, message_id) in shop.telegram.deleted


async def test_a_csv_header_row_of_two_words_is_not_imported_as_a_key(shop: Shop) -> None:
    # Suppliers' exports commonly head the column "License Key", "Serial Number" or "Activation Code".
    await stock(shop, "GAME", 0)
    await _start_restock(shop)

    report, _ = await _send_keys(
        shop, document=("export.csv", b"License Key,Product\nLK-1,Game\nLK-2,Game\n")
    )

    assert [key for _, key in await stored_keys(shop, "GAME")] == ["LK-1", "LK-2"], report


async def test_a_pasted_line_with_a_form_feed_is_rejected_like_in_a_file(shop: Shop) -> None:
    # The same line must be treated the same pasted or uploaded: in a file it is one binary
    # line; pasted, it must not become two half-keys that are then sold.
    await stock(shop, "GAME", 0)

    report, _ = await _send_keys(shop, "/restock GAME\nGOOD-1\nHALF-A\x0cHALF-B")

    assert "added 1, skipped 0 duplicates, rejected 1 lines" in report
    assert [key for _, key in await stored_keys(shop, "GAME")] == ["GOOD-1"]


async def test_an_upload_without_a_file_size_is_still_held_to_20_mb(shop: Shop) -> None:
    # The Bot API may leave file_size out; the limit is then enforced while downloading,
    # before a single key of the file is stored.
    await stock(shop, "GAME", ["OLD-1"])
    await _start_restock(shop)
    content = b"EARLY-1\nEARLY-2\n" + b"X" * MAX_UPLOAD
    since = time.monotonic()

    update = shop.telegram.message(ADMIN, "", document=("keys.txt", content), with_file_size=False)
    refusal = await shop.telegram.wait_for(lambda m: sent_since(shop.telegram, ADMIN, since)(m))

    assert "over 20 MB" in text(refusal), text(refusal)
    assert [key for _, key in await stored_keys(shop, "GAME")] == ["OLD-1"]
    assert await scalar(shop, select(func.count()).select_from(ImportBatch)) == 1
    assert (ADMIN, update["message"]["message_id"]) in shop.telegram.deleted


async def test_an_empty_upload_is_answered_in_one_line_and_its_message_deleted(
    shop: Shop,
) -> None:
    await stock(shop, "GAME", ["OLD-1"])
    await _start_restock(shop)
    since = time.monotonic()

    update = shop.telegram.message(ADMIN, "", document=("keys.txt", b""))
    answer = await shop.telegram.wait_for(lambda m: sent_since(shop.telegram, ADMIN, since)(m))

    assert "no keys found" in text(answer) and "\n" not in text(answer)
    assert await scalar(shop, select(func.count()).select_from(ImportBatch)) == 1
    assert (ADMIN, update["message"]["message_id"]) in shop.telegram.deleted


async def test_pasted_keys_are_deleted_from_the_chat_even_when_the_import_fails(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A database that fails mid-import cannot be produced on demand here: the store call is
    # made to fail instead. The keys must not stay in the chat because storing them failed.
    await stock(shop, "GAME", ["OLD-1"])

    async def failing(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(inventory, "restock", failing)
    since = time.monotonic()
    update = shop.telegram.message(ADMIN, "/restock GAME\nLOST-1\nLOST-2")
    apology = await shop.telegram.wait_for(lambda m: sent_since(shop.telegram, ADMIN, since)(m))
    await _start_restock(shop)
    pasted = shop.telegram.message(ADMIN, "LOST-3\nLOST-4")
    await shop.telegram.wait_for(
        lambda m: (
            sent_since(shop.telegram, ADMIN, since)(m) and m is not apology and "Sorry" in text(m)
        )
    )

    assert "Sorry, something went wrong" in text(apology)
    assert (ADMIN, update["message"]["message_id"]) in shop.telegram.deleted
    assert (ADMIN, pasted["message"]["message_id"]) in shop.telegram.deleted
    assert [key for _, key in await stored_keys(shop, "GAME")] == ["OLD-1"]


async def _answers(shop: Shop, user: int, command: str) -> list[str]:
    """Every message the bot sends `user` in answer to `command` (waits for the first, then for stragglers)."""
    since = time.monotonic()
    shop.telegram.message(user, command)
    seen = sent_since(shop.telegram, user, since)
    await shop.telegram.wait_for(seen)
    # A second answer (say, an import report after "unknown command") would follow at once:
    # a round trip through the bot proves the first update was handled completely.
    marker = await reply(shop.telegram, user, "/help")
    return [text(m) for m in shop.telegram.sent if seen(m) and m.time < marker.time]


@pytest.mark.parametrize(
    "command",
    ["/restock GAME", "/restock GAME\nSTOLEN-1\nSTOLEN-2", "/stats", "/confirm 1", "/cancel"],
)
async def test_a_non_admin_gets_the_unknown_command_answer_and_nothing_happens(
    shop: Shop, command: str
) -> None:
    await stock(shop, "GAME", ["OLD-1"])
    unknown = await _answers(shop, STRANGER, "/frobnicate")
    assert unknown == [UNKNOWN_COMMAND]

    answers = await _answers(shop, STRANGER, command)
    # And a paste right after must not be taken as keys either.
    after = await _answers(shop, STRANGER, "PASTED-1\nPASTED-2")

    assert answers == unknown
    assert "catalogue" in after[0] and len(after) == 1
    assert [key for _, key in await stored_keys(shop, "GAME")] == ["OLD-1"]
    assert await scalar(shop, select(func.count()).select_from(ImportBatch)) == 1
    assert not [d for d in shop.telegram.deleted if d[0] == STRANGER]


async def test_restock_of_an_unknown_product_is_a_one_line_answer(shop: Shop) -> None:
    await stock(shop, "GAME", ["OLD-1"])

    answers = await _answers(shop, ADMIN, "/restock NOPE\nNEW-1")

    assert len(answers) == 1 and "\n" not in answers[0] and "NOPE" in answers[0]
    assert [key for _, key in await stored_keys(shop, "GAME")] == ["OLD-1"]
    assert await scalar(shop, select(func.count()).select_from(ImportBatch)) == 1


async def test_cancel_ends_the_restock(shop: Shop) -> None:
    await stock(shop, "GAME", ["OLD-1"])
    await _start_restock(shop)

    cancelled = await reply(shop.telegram, ADMIN, "/cancel")
    after = await _answers(shop, ADMIN, "NEW-1\nNEW-2")

    assert text(cancelled) == "Restock cancelled."
    assert len(after) == 1 and REPORT not in after[0]
    assert [key for _, key in await stored_keys(shop, "GAME")] == ["OLD-1"]


async def test_an_abandoned_restock_times_out(shop: Shop) -> None:
    # Otherwise the admin's next ordinary message, days later, is imported as keys and deleted.
    await stock(shop, "GAME", 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await _start_restock(shop)
        await reply(
            shop.telegram, ADMIN, "/help"
        )  # the handler has finished with the update by now

    ignored = [str(w.message) for w in caught if "conversation_timeout" in str(w.message)]
    assert not ignored, ignored


async def test_a_restock_is_recorded_in_the_audit_log_as_the_admin(shop: Shop) -> None:
    await stock(shop, "GAME", 0)

    await _send_keys(shop, "/restock GAME\nA-1")

    assert (
        await scalar(shop, select(AuditEntry.admin_id).where(AuditEntry.action == "keys.import"))
        == ADMIN
    )


async def test_stats_shows_revenue_per_currency_and_stock_per_product(shop: Shop) -> None:
    await stock(shop, "GAME", 3, price="9.99", currency="usd", low_stock_threshold=5)
    await stock(shop, "GIFT", 10, price="5.00", currency="eur", low_stock_threshold=2)
    await pay(shop, await checkout(shop, BUYER, "GAME"))
    await pay(shop, await checkout(shop, BUYER, "GIFT", 2))
    await checkout(shop, BUYER, "GIFT")  # open: one key reserved

    stats = text(await reply(shop.telegram, ADMIN, "/stats", contains="Sales"))

    assert "Today: 2 orders, €10.00, $9.99" in stats
    assert "GAME: 2 / 0 / 1 ⚠️ low" in stats
    gift = next(line for line in stats.splitlines() if line.startswith("GIFT:"))
    assert gift == "GIFT: 7 / 1 / 2"
