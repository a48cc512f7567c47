"""Admin numbers: `/stats [SKU]` as a chart with the text summary below it, and `/export
[from] [to]`, the orders as an .xlsx workbook for the seller's books (no keys in it).

Drawing and writing the workbook are CPU work, so both run in a thread (asyncio.to_thread),
never on the event loop that also carries payments and deliveries. matplotlib is used
through its object API on the Agg canvas: no global pyplot state, safe in threads.
"""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from telegram import InputFile, Update
from telegram.constants import ParseMode

from handlers import render
from handlers.admin import admin_only
from handlers.context import KeyvendContext, Shop
from handlers.i18n import t, user_language
from store import broadcasts, catalogue, inventory, reports
from store.broadcasts import BroadcastUsage
from store.errors import NotFound
from store.inventory import StockLevels
from store.money import to_major

if TYPE_CHECKING:
    from openpyxl.cell import WriteOnlyCell

DAYS = 30
_EXPORT_HEADER = (
    "order",
    "created (UTC)",
    "paid (UTC)",
    "status",
    "sku",
    "product",
    "quantity",
    "amount",
    "currency",
    "provider",
    "buyer",
)


def _language(update: Update) -> str:
    return user_language(update.effective_user.language_code)


def chart(days: list[reports.Day], levels: list[StockLevels], today: date) -> bytes:
    """Revenue and orders per day for DAYS days (a line per currency), and stock per product."""
    # matplotlib (with numpy and Pillow) is ~45 MB resident: loaded by the first chart drawn,
    # in its worker thread, rather than by every shop at start-up.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    axis = [today - timedelta(days=DAYS - 1 - i) for i in range(DAYS)]
    figure = Figure(figsize=(9, 8), dpi=100)
    FigureCanvasAgg(figure)
    revenue, count, stock = figure.subplots(3, 1)
    for currency in sorted({d.currency for d in days}):
        by_day = {d.day: d for d in days if d.currency == currency}
        revenue.plot(
            axis,
            [
                float(to_major(by_day[x].revenue_minor, currency)) if x in by_day else 0
                for x in axis
            ],
            marker=".",
            label=currency.upper(),
        )
        count.bar(
            axis, [by_day[x].orders if x in by_day else 0 for x in axis], label=currency.upper()
        )
    revenue.set_title(f"Revenue per day, last {DAYS} days")
    count.set_title("Paid orders per day")
    for ax in (revenue, count):
        if days:
            ax.legend(loc="upper left")
        ax.tick_params(axis="x", labelsize=7)
    stock.set_title("Stock per product (available / reserved)")
    skus = [level.sku for level in levels]
    stock.barh(skus, [level.available for level in levels], label="available")
    stock.barh(
        skus,
        [level.reserved for level in levels],
        left=[level.available for level in levels],
        label="reserved",
    )
    figure.autofmt_xdate()
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def workbook(rows: list[reports.OrderRow]) -> bytes:
    """The orders as an Excel workbook, one row per order under a header row."""
    from openpyxl import Workbook  # with numpy and Pillow: loaded when first used (see chart)
    from openpyxl.cell import WriteOnlyCell

    book = Workbook(write_only=True)
    sheet = book.create_sheet("orders")
    sheet.append(list(_EXPORT_HEADER))

    def text(value: str) -> WriteOnlyCell:
        cell = WriteOnlyCell(sheet, value=value)
        cell.data_type = "s"  # a product named "=HYPERLINK(...)" stays text, not a formula
        return cell

    for r in rows:
        sheet.append(
            [
                r.id,
                r.created_at.replace(tzinfo=None),
                r.paid_at.replace(tzinfo=None) if r.paid_at else None,
                r.status,
                text(r.sku),
                text(r.product),
                r.quantity,
                float(to_major(r.amount_minor, r.currency)),
                r.currency.upper(),
                r.provider,
                r.buyer_id,
            ]
        )
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


@admin_only
async def stats(update: Update, context: KeyvendContext) -> None:
    """Send the sales and stock chart, then the summary: `/stats [SKU]`."""
    db = context.shop.db
    language = _language(update)
    sku = context.args[0] if context.args else None
    levels = await inventory.stock_levels(db)
    if sku is not None:
        try:
            await catalogue.get_product(db, sku=sku)
        except NotFound as exc:
            await update.effective_chat.send_message(render.html.escape(str(exc)))
            return
        levels = [level for level in levels if level.sku == sku]
    days = await reports.daily(db, days=DAYS, sku=sku)
    png = await asyncio.to_thread(chart, days, levels, datetime.now(UTC).date())
    await update.effective_chat.send_photo(InputFile(png, filename="stats.png"))
    if sku is None:
        summary = render.stats(
            await reports.sales(db),
            levels,
            language,
            broadcast=await _paid_broadcast(context.shop),
        )
    else:
        summary = _product_summary(sku, days, levels, language)
    await update.effective_chat.send_message(summary, parse_mode=ParseMode.HTML)


async def _paid_broadcast(shop: Shop) -> BroadcastUsage | None:
    """What paid broadcast cost lately: shown where the seller allows it, or it was used."""
    since = datetime.now(UTC).date() - timedelta(days=render.BROADCAST_DAYS - 1)
    used = await broadcasts.usage(shop.db, since=since)
    return used if shop.paid_broadcast or used.messages else None


def _product_summary(
    sku: str, days: list[reports.Day], levels: list[StockLevels], language: str
) -> str:
    totals: dict[str, int] = {}
    for d in days:
        totals[d.currency] = totals.get(d.currency, 0) + d.revenue_minor
    revenue = ", ".join(render.money(m, c, language) for c, m in sorted(totals.items())) or "—"
    level = levels[0]
    return "\n".join(
        [
            f"<b>{render.html.escape(sku)}</b>",
            t(
                language,
                "Last {days} days: {orders} orders, {revenue}",
                days=DAYS,
                orders=sum(d.orders for d in days),
                revenue=revenue,
            ),
            t(language, "<b>Stock</b> (available / reserved / sold)"),
            f"{level.available} / {level.reserved} / {level.sold}",
        ]
    )


@admin_only
async def export(update: Update, context: KeyvendContext) -> None:
    """Send the orders placed between two dates as .xlsx: `/export [from] [to]` (YYYY-MM-DD)."""
    language = _language(update)
    args = context.args or []
    today = datetime.now(UTC).date()
    try:
        start = date.fromisoformat(args[0]) if args else today - timedelta(days=DAYS - 1)
        end = date.fromisoformat(args[1]) if len(args) > 1 else today
    except ValueError:
        start = end = None
    if start is None or len(args) > 2 or end < start:
        await update.effective_chat.send_message(
            t(language, "Usage: /export [FROM] [TO], dates as YYYY-MM-DD, FROM not after TO")
        )
        return
    rows = await reports.orders_between(
        context.shop.db,
        datetime.combine(start, datetime.min.time(), UTC),
        datetime.combine(end + timedelta(days=1), datetime.min.time(), UTC),
    )
    data = await asyncio.to_thread(workbook, rows)
    await update.effective_chat.send_document(
        InputFile(data, filename=f"orders-{start}-{end}.xlsx"),
        caption=t(
            language, "{n} orders from {start} to {end} (UTC).", n=len(rows), start=start, end=end
        ),
    )
