"""An order's keys as a spreadsheet: .xlsx (openpyxl) or .csv, for downloads and e-mails.

Each key is written as text, never as a formula or a number: a key such as "=1+1" or
"000123" must reach the client exactly as imported.
"""

from __future__ import annotations

import csv
import io

from store.client_downloads import Sheet

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV = "text/csv"
_HEADER = ("order", "sku", "key")


def xlsx(sheet: Sheet) -> bytes:
    """The keys as an Excel workbook, one row per key (CPU-bound: run it off the loop)."""
    # openpyxl brings numpy and Pillow (~25 MB resident): loaded by the first workbook made.
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell

    book = Workbook(write_only=True)
    rows = book.create_sheet(f"order {sheet.order_id}")
    rows.append(list(_HEADER))
    for key in sheet.keys:
        cell = WriteOnlyCell(rows, value=key)
        cell.data_type = "s"  # text, even when it starts with "=" or looks like a number
        rows.append([sheet.order_id, sheet.sku, cell])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def csv_bytes(sheet: Sheet) -> bytes:
    """The keys as UTF-8 CSV with a header row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(_HEADER)
    writer.writerows((sheet.order_id, sheet.sku, key) for key in sheet.keys)
    return out.getvalue().encode("utf-8")


def filename(sheet: Sheet, extension: str) -> str:
    return f"keyvend-order-{sheet.order_id}.{extension}"
