"""/stats as a chart and /export as a workbook, through the chat.

The chart must be a real PNG that matplotlib drew (signature, size, and PIL opens it with the
expected dimensions); the export must open with openpyxl, hold one row per order under a
header, and hold no key anywhere.
"""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime, timedelta

import pytest
from openpyxl import load_workbook
from PIL import Image

from tests.e2e.conftest import ADMIN, Shop
from tests.e2e.helpers import UNKNOWN_COMMAND, checkout, pay, reply, stock, text

BUYER = 3001
STRANGER = 3002
PNG = b"\x89PNG\r\n\x1a\n"


async def _sales(shop: Shop) -> list[str]:
    """Two paid orders in two currencies and one open order; the keys the shop holds."""
    keys = ["GAME-AAA-111", "GAME-BBB-222", "GAME-CCC-333"]
    await stock(shop, "GAME", keys, price="9.99", currency="usd")
    await stock(shop, "GIFT", ["GIFT-XYZ-999"], price="5.00", currency="eur")
    await pay(shop, await checkout(shop, BUYER, "GAME"))
    await pay(shop, await checkout(shop, BUYER, "GIFT"))
    await checkout(shop, BUYER, "GAME")
    return [*keys, "GIFT-XYZ-999"]


async def _photo_and_summary(shop: Shop, command: str):
    since = time.monotonic()
    summary = await reply(shop.telegram, ADMIN, command, contains="Stock")
    photos = [
        m
        for m in shop.telegram.messages_to(ADMIN)
        if m.method == "sendPhoto" and m.time >= since and m.time <= summary.time
    ]
    assert len(photos) == 1
    return photos[0], text(summary)


def _assert_chart(content: bytes) -> None:
    assert content.startswith(PNG)
    assert len(content) > 20_000  # three drawn panels, not an empty canvas
    image = Image.open(io.BytesIO(content))
    image.verify()
    assert image.size == (900, 800)


async def test_stats_sends_a_chart_then_the_summary(shop: Shop) -> None:
    await _sales(shop)

    photo, summary = await _photo_and_summary(shop, "/stats")

    _assert_chart(photo.file_content)
    assert "Today: 2 orders, €5.00, $9.99" in summary
    assert "GAME: 1 / 1 / 1" in summary
    assert "Paid broadcast" not in summary  # not allowed in this shop, and never used


async def test_stats_for_one_product(shop: Shop) -> None:
    await _sales(shop)

    photo, summary = await _photo_and_summary(shop, "/stats GAME")

    _assert_chart(photo.file_content)
    assert summary.splitlines()[:2] == ["GAME", "Last 30 days: 1 orders, $9.99"]
    assert "1 / 1 / 1" in summary


async def test_stats_of_an_unknown_product_is_one_line(shop: Shop) -> None:
    assert text(await reply(shop.telegram, ADMIN, "/stats NOPE")) == "no product with SKU NOPE"


async def test_export_is_a_workbook_of_orders_without_keys(shop: Shop) -> None:
    keys = await _sales(shop)
    today = datetime.now(UTC).date()

    document = await reply(shop.telegram, ADMIN, f"/export {today - timedelta(days=1)} {today}")

    assert document.method == "sendDocument" and document.file_name.endswith(".xlsx")
    assert text(document).startswith("3 orders from")
    book = load_workbook(io.BytesIO(document.file_content), read_only=True)
    table = [list(row) for row in book["orders"].iter_rows(values_only=True)]
    assert table[0][:4] == ["order", "created (UTC)", "paid (UTC)", "status"]
    assert [(r[0], r[3], r[4], r[7], r[8]) for r in table[1:]] == [
        (1, "fulfilled", "GAME", 9.99, "USD"),
        (2, "fulfilled", "GIFT", 5.0, "EUR"),
        (3, "pending", "GAME", 9.99, "USD"),
    ]
    everything = " ".join(str(cell) for row in table for cell in row)
    assert not [key for key in keys if key in everything]
    assert not [key for key in keys if key.encode() in document.file_content]


async def test_export_outside_the_dates_is_empty_and_bad_dates_get_usage(shop: Shop) -> None:
    await _sales(shop)

    empty = await reply(shop.telegram, ADMIN, "/export 2020-01-01 2020-01-31")
    bad = await reply(shop.telegram, ADMIN, "/export 2020-02-30")
    backwards = await reply(shop.telegram, ADMIN, "/export 2021-01-02 2021-01-01")

    assert text(empty).startswith("0 orders from 2020-01-01 to 2020-01-31")
    table = list(
        load_workbook(io.BytesIO(empty.file_content))["orders"].iter_rows(values_only=True)
    )
    assert len(table) == 1
    assert text(bad).startswith("Usage: /export") and text(backwards).startswith("Usage: /export")


@pytest.mark.parametrize("command", ["/stats", "/stats GAME", "/export"])
async def test_a_non_admin_gets_the_unknown_command_answer(shop: Shop, command: str) -> None:
    await stock(shop, "GAME", 1)

    answer = await reply(shop.telegram, STRANGER, command)

    assert text(answer) == UNKNOWN_COMMAND
    assert not [m for m in shop.telegram.messages_to(STRANGER) if m.method != "sendMessage"]
