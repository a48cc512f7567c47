"""Inventory: importing keys, and counting what each product has in every state.

An import is parsed and encrypted before its transaction starts (so the write lock is held
only for database work), then written in one transaction: the batch, the keys that are
new, and the fulfilment of any backordered orders the new stock can fill. Duplicates are
found on the keyed digest, within the batch and against every key the product ever had;
the unique index (product, digest) makes that hold even for two imports racing.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from store import watchers
from store.audit import audit
from store.buyers import dialect_insert
from store.crypto import KeyVault, normalise
from store.db import Database
from store.errors import InvalidInput, NotFound
from store.models import ImportBatch, Key, KeyStatus, Product
from store.orders import fulfil_backorders

MAX_KEY_LENGTH = 1000
_CHUNK = 2000
# Unicode's control characters (category Cc) except tab.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_HEADERS = frozenset(
    {
        "key",
        "keys",
        "code",
        "codes",
        "license",
        "licence",
        "serial",
        "licensekey",
        "licencekey",
        "productkey",
        "serialnumber",
        "serialkey",
        "activationcode",
        "activationkey",
        "cdkey",
        "giftcard",
        "pin",
        "redeemcode",
    }
)


@dataclass(slots=True)
class ParsedKeys:
    """Lines of an import sorted into keys to store and lines rejected, by reason."""

    keys: list[str] = field(default_factory=list)
    empty: int = 0
    too_long: int = 0
    binary: int = 0
    not_utf8: int = 0

    @property
    def rejected(self) -> int:
        return self.empty + self.too_long + self.binary + self.not_utf8


@dataclass(frozen=True, slots=True)
class RestockReport:
    sku: str
    added: int
    duplicates: int
    empty: int
    too_long: int
    binary: int
    not_utf8: int
    backorders_fulfilled: tuple[int, ...]
    available: int

    @property
    def rejected(self) -> int:
        return self.empty + self.too_long + self.binary + self.not_utf8


@dataclass(frozen=True, slots=True)
class StockLevels:
    sku: str
    name: str
    imported: int
    available: int
    reserved: int
    sold: int
    revoked: int
    low_stock_threshold: int
    active: bool

    @property
    def low(self) -> bool:
        return self.available <= self.low_stock_threshold


def parse_keys(data: bytes | str, *, is_csv: bool = False) -> ParsedKeys:
    """One key per line: trimmed; blank, over-long and binary lines rejected.

    Bytes (an uploaded file) are decoded as UTF-8 line by line, so one bad line is rejected
    on its own instead of spoiling the file. A line in another encoding (Latin-1, GBK...) is
    counted as not UTF-8 rather than guessed at: a key decoded wrongly would be sold and not
    redeem. In a .csv the first column is the key and a header row is skipped.
    """
    parsed = ParsedKeys()
    # Only CR/LF end a line: str.splitlines() would also split on \x0b, \x0c, \x1c-\x1e, \x85,
    # turning a line with a control character into two half-keys instead of rejecting it.
    lines: Iterable[bytes | str] = (
        (
            data.splitlines()
            if isinstance(data, bytes)
            else re.split(r"\r\n|\r|\n", re.sub(r"(?:\r\n|\r|\n)\Z", "", data))
        )
        if data
        else []
    )
    for number, raw in enumerate(lines):
        if isinstance(raw, bytes):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                parsed.not_utf8 += 1
                continue
        else:
            line = raw
        if number == 0:
            line = line.removeprefix("\ufeff")
        if is_csv and line.strip():
            fields = next(csv.reader([line]), [])
            line = fields[0] if fields else ""
            if number == 0 and re.sub(r"[\s_-]+", "", line.lower()) in _HEADERS:
                continue
        key = normalise(line)
        if not key:
            parsed.empty += 1
        elif _is_binary(key):
            parsed.binary += 1
        elif len(key) > MAX_KEY_LENGTH:
            parsed.too_long += 1
        else:
            parsed.keys.append(key)
    return parsed


def _is_binary(text: str) -> bool:
    # Control characters (other than tab) never belong in a key a human can redeem.
    return _CONTROL.search(text) is not None


async def restock(
    db: Database,
    vault: KeyVault,
    sku: str,
    parsed: ParsedKeys,
    *,
    source: str,
    admin_id: int | None = None,
    now: datetime | None = None,
) -> RestockReport:
    """Add a batch of keys to a product and fill its backorders from them."""
    now = now or datetime.now(UTC)
    unique: dict[bytes, str] = {}
    for key in parsed.keys:
        unique.setdefault(vault.digest(key), key)
    rows = [(digest, vault.encrypt(key)) for digest, key in unique.items()]

    async def work(session: AsyncSession) -> RestockReport:
        product = await session.scalar(select(Product).where(Product.sku == sku).with_for_update())
        if product is None:
            raise NotFound(f"no product with SKU {sku}")
        batch = ImportBatch(product_id=product.id, source=source, admin_id=admin_id, created_at=now)
        session.add(batch)
        await session.flush()
        for start in range(0, len(rows), _CHUNK):
            await _insert_new(session, product.id, batch.id, rows[start : start + _CHUNK])
        added = await session.scalar(select(func.count()).where(Key.batch_id == batch.id))
        batch.added = added
        batch.duplicates = len(parsed.keys) - added
        batch.rejected = parsed.rejected
        fulfilled = await fulfil_backorders(session, product.id, now)
        session.add(audit(admin_id, "keys.import", f"{sku}: {added} added via {source}"))
        available = await session.scalar(
            select(func.count()).where(
                Key.product_id == product.id, Key.status == KeyStatus.AVAILABLE
            )
        )
        return RestockReport(
            sku=sku,
            added=added,
            duplicates=len(parsed.keys) - added,
            empty=parsed.empty,
            too_long=parsed.too_long,
            binary=parsed.binary,
            not_utf8=parsed.not_utf8,
            backorders_fulfilled=tuple(fulfilled),
            available=available,
        )

    if not rows and parsed.rejected == parsed.empty:  # blank lines are no more than nothing
        raise InvalidInput("no keys found: send one key per line")
    report = await db.write(work)
    if report.available:  # something left to buy after the backorders: tell who asked
        await watchers.restocked(db, sku, now=now)
    return report


async def _insert_new(
    session: AsyncSession, product_id: int, batch_id: int, rows: list[tuple[bytes, bytes]]
) -> None:
    # ON CONFLICT DO NOTHING skips a key the product ever had (the unique digest decides, so
    # even two imports racing store it once); the caller counts what this batch added.
    # Through the connection: a plain executemany, without the ORM's per-row bookkeeping.
    keys = Key.__table__
    statement = dialect_insert(session)(keys).on_conflict_do_nothing(
        index_elements=[keys.c.product_id, keys.c.digest]
    )
    connection = await session.connection()
    await connection.execute(
        statement,
        [
            {
                "product_id": product_id,
                "batch_id": batch_id,
                "ciphertext": ciphertext,
                "digest": digest,
                "status": KeyStatus.AVAILABLE,
            }
            for digest, ciphertext in rows
        ],
    )


async def stock_levels(db: Database) -> list[StockLevels]:
    """Exact key counts per product and status (a full count: for admins, not buyers)."""

    async def work(session: AsyncSession) -> list[StockLevels]:
        counts: dict[int, dict[str, int]] = {}
        rows = await session.execute(
            select(Key.product_id, Key.status, func.count()).group_by(Key.product_id, Key.status)
        )
        for product_id, status, count in rows:
            counts.setdefault(product_id, {})[status] = count
        products = (await session.scalars(select(Product).order_by(Product.sku))).all()
        levels = []
        for p in products:
            c = counts.get(p.id, {})
            levels.append(
                StockLevels(
                    sku=p.sku,
                    name=p.name,
                    imported=sum(c.values()),
                    available=c.get(KeyStatus.AVAILABLE, 0),
                    reserved=c.get(KeyStatus.RESERVED, 0),
                    sold=c.get(KeyStatus.SOLD, 0),
                    revoked=c.get(KeyStatus.REVOKED, 0),
                    low_stock_threshold=p.low_stock_threshold,
                    active=p.active,
                )
            )
        return levels

    return await db.read(work)
