"""Importing keys: parsing, deduplication, racing imports and the stock counts.

`parse_keys` is checked on what sellers actually paste and upload (spaces, blank lines,
Windows line ends, a BOM, .csv exports with a header, over-long and binary lines, bytes
that are not UTF-8). `restock` is checked on SQLite and PostgreSQL: a key is stored once
per product however often it is imported — within a batch, across batches, after it was
sold or revoked, with different surrounding spaces or Unicode forms, and when several imports
of overlapping batches race — and `stock_levels` counts every state.
"""

from __future__ import annotations

import asyncio
import io
import random
import unicodedata
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from store import catalogue, inventory, orders
from store.crypto import KeyVault
from store.db import Database
from store.errors import InvalidInput, NotFound
from store.inventory import MAX_KEY_LENGTH, parse_keys
from store.models import ImportBatch, Key
from tests.store.conftest import REFUND, FakeGateway, invariants_hold, open_order, scalar, stocked


async def stored_keys(db: Database, vault: KeyVault) -> list[str]:
    """Every key the database holds, decrypted, in import order."""

    async def work(session):
        return list((await session.scalars(select(Key.ciphertext).order_by(Key.id))).all())

    return [vault.decrypt(c) for c in await db.read(work)]


async def restock(
    db: Database, vault: KeyVault, text: str, sku: str = "GAME"
) -> inventory.RestockReport:
    return await inventory.restock(db, vault, sku, parse_keys(text), source="test")


async def levels(db: Database, sku: str = "GAME") -> inventory.StockLevels:
    return next(level for level in await inventory.stock_levels(db) if level.sku == sku)


# ---------------------------------------------------------------- parse_keys


def test_lines_are_trimmed_and_blank_lines_ignored() -> None:
    parsed = parse_keys("  AAAA-1111  \n\n\t\nBBBB-2222\t\n   \nC C C\n")
    assert parsed.keys == ["AAAA-1111", "BBBB-2222", "C C C"]  # inner spaces belong to the key
    assert (parsed.empty, parsed.too_long, parsed.binary) == (3, 0, 0)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param("A-1\r\nB-2\r\nC-3\r\n", id="crlf-text"),
        pytest.param(b"A-1\r\nB-2\r\nC-3\r\n", id="crlf-bytes"),
        pytest.param("A-1\rB-2\rC-3\r", id="cr-text"),
        pytest.param("A-1\rB-2\rC-3", id="cr-text-no-final-break"),
        pytest.param("\ufeffA-1\nB-2\nC-3\n", id="bom-text"),
        pytest.param(b"\xef\xbb\xbfA-1\r\nB-2\r\nC-3", id="bom-bytes"),
    ],
)
def test_windows_and_old_mac_line_ends_and_a_byte_order_mark(data: str | bytes) -> None:
    parsed = parse_keys(data)
    assert parsed.keys == ["A-1", "B-2", "C-3"]
    assert parsed.rejected == 0


def test_a_bom_is_only_a_marker_at_the_start_of_the_file() -> None:
    # U+FEFF elsewhere is a character of the line (and not a control character).
    assert parse_keys("A-1\n\ufeffB-2").keys == ["A-1", "\ufeffB-2"]


def test_csv_takes_the_first_column_and_skips_a_header() -> None:
    data = b'\xef\xbb\xbfKey,Note\r\nAAAA-1,first batch\r\n"BB,BB-2",quoted comma\r\n  CCCC-3  ,x\r\n,empty key\r\n'
    parsed = parse_keys(data, is_csv=True)
    assert parsed.keys == ["AAAA-1", "BB,BB-2", "CCCC-3"]
    assert parsed.empty == 1


def test_csv_header_only_on_the_first_line_and_only_in_csv() -> None:
    assert parse_keys("code\nKEY-1\ncode\n", is_csv=True).keys == ["KEY-1", "code"]
    assert parse_keys("code\nKEY-1\n").keys == ["code", "KEY-1"]  # a .txt has no header
    assert parse_keys("ABCD-1,x\nEFGH-2,y", is_csv=True).keys == [
        "ABCD-1",
        "EFGH-2",
    ]  # no header at all


def test_over_long_lines_are_rejected() -> None:
    longest, too_long = "K" * MAX_KEY_LENGTH, "K" * (MAX_KEY_LENGTH + 1)
    parsed = parse_keys(f"{longest}\n{too_long}\n  {longest}  ")
    assert parsed.keys == [longest, longest]
    assert parsed.too_long == 1


@pytest.mark.parametrize("line", ["AB\x00CD", "AB\x07CD", "AB\x1bCD", "AB\x7fCD", "AB\x9bCD"])
def test_control_characters_reject_the_line(line: str) -> None:
    for data in (f"GOOD-1\n{line}\nGOOD-2", f"GOOD-1\n{line}\nGOOD-2".encode()):
        parsed = parse_keys(data)
        assert parsed.keys == ["GOOD-1", "GOOD-2"]
        assert parsed.binary == 1


def test_a_tab_inside_a_key_is_kept() -> None:
    assert parse_keys("USER\tPASS").keys == ["USER\tPASS"]


@pytest.mark.parametrize("separator", ["\x0b", "\x0c", "\x1e", "\x85", "\u2028"])
def test_pasted_text_and_an_uploaded_file_parse_the_same(separator: str) -> None:
    line = f"GOOD-1\nAB{separator}CD\nGOOD-2"
    assert parse_keys(line) == parse_keys(line.encode())


def test_invalid_utf8_rejects_only_its_line() -> None:
    parsed = parse_keys(b"GOOD-1\n\xff\xfe\xfd\nG\xc3\n\xc3\xa9T\xc3\xa9-3\n")
    assert parsed.keys == ["GOOD-1", "éTé-3"]
    assert (parsed.not_utf8, parsed.binary) == (2, 0)


def test_a_latin1_line_is_reported_as_not_utf8_not_as_binary() -> None:
    # "CAFÉ" saved by a Windows export: decoding it by guess could sell a key that fails.
    parsed = parse_keys("GOOD-1\nCAFÉ-2\n".encode("latin-1"))
    assert parsed.keys == ["GOOD-1"]
    assert (parsed.not_utf8, parsed.binary, parsed.rejected) == (1, 0, 1)


def test_nothing_but_blank_lines_parses_to_nothing() -> None:
    assert parse_keys("") == inventory.ParsedKeys()
    assert parse_keys(b"\n\r\n  \n").keys == []


# ---------------------------------------------------------------- an upload, block by block


def _key_file(data: bytes, is_csv: bool = False) -> inventory.KeyFile:
    return inventory.KeyFile(io.BytesIO(data), size=len(data), is_csv=is_csv)


def _merged(blocks: Iterator[inventory.ParsedKeys]) -> inventory.ParsedKeys:
    merged = inventory.ParsedKeys()
    for parsed in blocks:
        merged.keys += parsed.keys
        merged.empty += parsed.empty
        merged.too_long += parsed.too_long
        merged.binary += parsed.binary
        merged.not_utf8 += parsed.not_utf8
    return merged


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64])
def test_a_file_read_in_blocks_parses_as_the_whole_file_does(
    block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny blocks put a block boundary everywhere: inside a CR LF, a UTF-8 sequence, a line
    # longer than a block, right after the BOM and the header.
    monkeypatch.setattr(inventory, "_BLOCK", block)
    text = (
        b"\xef\xbb\xbfK-1\r\nK-2\rK\xc3\xa9-3\n\n\xff\xfe\n"
        + b"L" * 20
        + b"\r\n"
        + b"Y" * 1001
        + b"\nK-4"
    )
    csv = b'\xef\xbb\xbfcode,note\nC-1,x\r\n"C-2, two",y\ncode,z\nC-3'

    assert _merged(iter(_key_file(text))) == parse_keys(text)
    assert _merged(iter(_key_file(csv, is_csv=True))) == parse_keys(csv, is_csv=True)
    # Only the file's first line can be a header: "code" later on is a key.
    assert parse_keys(csv, is_csv=True).keys == ["C-1", "C-2, two", "code", "C-3"]


def test_the_size_of_a_file_is_estimated_from_the_part_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inventory, "_BLOCK", 1000)
    keys = _key_file(b"".join(b"KEY-%05d\n" % i for i in range(10_000)))
    blocks = iter(keys)

    next(blocks)

    assert 9_000 < keys.estimate() < 11_000


# ---------------------------------------------------------------- restock: in batches


async def test_an_upload_is_stored_in_batches_each_key_once(
    db: Database, vault: KeyVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inventory, "LIVE_BATCH", 40)
    monkeypatch.setattr(inventory, "_BLOCK", 100)
    await stocked(db, vault, keys=0)
    await restock(db, vault, "UP-00007\nUP-00123")  # in stock before the upload
    lines = [f"UP-{i:05d}" for i in range(300)]
    data = "\n".join([*lines, "", *lines[:50], "X" * 1001]).encode()  # repeats, 2 batches on
    seen: list[int] = []

    async def progress(done: int) -> None:
        seen.append(done)

    report = await inventory.restock(
        db, vault, "GAME", _key_file(data), source="file", progress=progress, live=True
    )

    assert (report.added, report.duplicates, report.empty, report.too_long) == (298, 52, 1, 1)
    assert sorted(await stored_keys(db, vault)) == lines
    assert seen == sorted(seen) and len(seen) >= 300 // 40 and seen[-1] == 350
    batches = await scalar(db, select(func.count()).select_from(ImportBatch))
    assert batches == 2  # the upload is one import, however many transactions it took
    assert await scalar(db, select(func.sum(ImportBatch.added))) == 300
    await invariants_hold(db)


async def test_an_upload_that_fails_part_way_keeps_what_it_stored_consistent(
    db: Database, vault: KeyVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inventory, "LIVE_BATCH", 10)
    await stocked(db, vault, keys=0)
    keys = [f"PART-{i:03d}" for i in range(100)]

    def upload() -> Iterator[inventory.ParsedKeys]:
        yield parse_keys("\n".join(keys[:45]))
        raise OSError("the connection to Telegram broke")

    with pytest.raises(OSError):
        await inventory.restock(db, vault, "GAME", upload(), source="file", live=True)

    stored = await stored_keys(db, vault)
    assert stored == keys[: len(stored)] and 0 < len(stored) <= 45
    await invariants_hold(db)  # imported = available + ... after every commit
    again = await restock(db, vault, "\n".join(keys))
    assert (again.added, again.duplicates) == (100 - len(stored), len(stored))
    assert sorted(await stored_keys(db, vault)) == keys
    await invariants_hold(db)


# ---------------------------------------------------------------- restock: each key once


async def test_duplicates_within_a_batch_are_skipped(db: Database, vault: KeyVault) -> None:
    await stocked(db, vault, keys=0)
    report = await restock(db, vault, "A-1\nB-2\nA-1\n  B-2  \nC-3\n\nC-3")
    assert (report.added, report.duplicates, report.empty, report.available) == (3, 3, 1, 3)
    assert await stored_keys(db, vault) == ["A-1", "B-2", "C-3"]
    await invariants_hold(db)


async def test_keys_ever_imported_are_never_imported_again(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    product = await stocked(db, vault, keys=0)
    await restock(db, vault, "SOLD-1\nREVOKED-2\nRESERVED-3\nFREE-4")
    # One key sold, one sold and then refunded (revoked), one reserved by an open checkout.
    sold = await open_order(db, gateway, product.id, 1)
    await orders.fulfil(db, gateway.payment(sold), REFUND)
    revoked = await open_order(db, gateway, product.id, 2)
    await orders.fulfil(db, gateway.payment(revoked), REFUND)
    await orders.record_refund(db, revoked)
    await open_order(db, gateway, product.id, 3)

    report = await restock(db, vault, "SOLD-1\nREVOKED-2\nRESERVED-3\nFREE-4\nNEW-5")

    assert (report.added, report.duplicates) == (1, 4)
    level = await levels(db)
    assert (level.imported, level.available, level.reserved, level.sold, level.revoked) == (
        5,
        2,
        1,
        1,
        1,
    )
    await invariants_hold(db)


async def test_the_same_key_differently_written_is_one_key(db: Database, vault: KeyVault) -> None:
    await stocked(db, vault, keys=0)
    composed = unicodedata.normalize("NFC", "CAFÉ-2024")
    decomposed = unicodedata.normalize("NFD", "CAFÉ-2024")
    assert composed != decomposed
    await restock(db, vault, f"  {composed}\t")
    report = await restock(db, vault, f"{decomposed}\n{composed}  \n cafÉ-2024")
    assert (report.added, report.duplicates) == (1, 2)  # case still matters: keys are exact
    assert await stored_keys(db, vault) == [composed, "cafÉ-2024"]


async def test_a_key_may_belong_to_two_products(db: Database, vault: KeyVault) -> None:
    await stocked(db, vault, "GAME", keys=0)
    await stocked(db, vault, "DLC", keys=0)
    assert (await restock(db, vault, "SHARED-CODE", "GAME")).added == 1
    assert (await restock(db, vault, "SHARED-CODE", "DLC")).added == 1


async def test_a_large_import_is_stored_in_chunks_each_key_once(
    db: Database, vault: KeyVault
) -> None:
    await stocked(db, vault, keys=0)
    keys = [f"BULK-{i:06d}" for i in range(4500)]  # more than one insert chunk
    report = await restock(db, vault, "\n".join(keys + keys[:100]))
    assert (report.added, report.duplicates) == (4500, 100)
    again = await restock(db, vault, "\n".join(keys[::-1]))
    assert (again.added, again.duplicates) == (0, 4500)
    assert (await levels(db)).imported == 4500
    await invariants_hold(db)


async def test_concurrent_imports_of_overlapping_batches_store_each_key_once(
    db: Database, vault: KeyVault
) -> None:
    await stocked(db, vault, keys=0)
    pool = [f"RACE-{i:04d}" for i in range(300)]
    rng = random.Random(7)
    batches = [rng.sample(pool, 120) for _ in range(6)]

    reports = await asyncio.gather(*(restock(db, vault, "\n".join(batch)) for batch in batches))

    union = set().union(*batches)
    assert sum(r.added for r in reports) == len(union)
    for report, batch in zip(reports, batches, strict=True):
        assert report.added + report.duplicates == len(batch)
    stored = await stored_keys(db, vault)
    assert sorted(stored) == sorted(union)
    assert await scalar(db, select(func.sum(ImportBatch.added))) == len(union)
    await invariants_hold(db)


async def test_an_import_without_keys_or_product_is_refused(db: Database, vault: KeyVault) -> None:
    await stocked(db, vault, keys=0)
    for nothing in ("", "\n  \n\t\n"):  # blank lines are the same as an empty file
        with pytest.raises(InvalidInput, match="no keys found"):
            await restock(db, vault, nothing)
    with pytest.raises(NotFound):
        await restock(db, vault, "A-1", sku="NOPE")
    assert await scalar(db, select(func.count()).select_from(ImportBatch)) == 0
    # Only rejected lines: a batch is recorded so the seller sees what was refused.
    report = await restock(db, vault, "X" * (MAX_KEY_LENGTH + 1) + "\n\n")
    assert (report.added, report.too_long, report.empty) == (0, 1, 1)


# ---------------------------------------------------------------- stock levels


async def test_stock_levels_count_every_state(
    db: Database, vault: KeyVault, gateway: FakeGateway
) -> None:
    game = await stocked(db, vault, "GAME", keys=10)
    await stocked(db, vault, "EMPTY", keys=0)
    await catalogue.edit_product(db, "EMPTY", catalogue.ProductChanges(active=False))

    async def buy(buyer: int, quantity: int) -> int:
        return await open_order(db, gateway, game.id, buyer, quantity)

    await buy(1, 2)  # reserved
    await orders.fulfil(db, gateway.payment(await buy(2, 3)), REFUND)  # sold
    refunded = await buy(3, 1)
    await orders.fulfil(db, gateway.payment(refunded), REFUND)
    await orders.record_refund(db, refunded)  # revoked

    game_level, empty = await levels(db, "GAME"), await levels(db, "EMPTY")
    assert (
        game_level.imported,
        game_level.available,
        game_level.reserved,
        game_level.sold,
        game_level.revoked,
    ) == (10, 4, 2, 3, 1)
    assert game_level.low and game_level.active  # 4 left, threshold 5
    assert (empty.imported, empty.available, empty.active) == (0, 0, False)
    await invariants_hold(db)
