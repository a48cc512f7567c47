"""Inventory: importing keys, and counting what each product has in every state.

An import goes in batches, so a 20 MB upload never sits in memory as one list, nor holds
the event loop or the database: each batch is parsed (a `KeyFile` reads an upload a block
at a time), fingerprinted and encrypted in a worker thread while the previous batch is
written, then written in a transaction of its own: its keys that are new, the import's
running counts (so imported = available + reserved + sold + revoked after every commit)
and the fulfilment of any backordered orders the new stock can fill. Duplicates are found
on the keyed digest, within a batch and against every key the product ever had, which
includes the import's own earlier batches; the unique index (product, digest) makes that
hold even for two imports racing. An import that fails part-way keeps the batches it
committed: sending the same keys again skips those and adds the rest.
"""

from __future__ import annotations

import asyncio
import csv
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from store import watchers
from store.audit import audit
from store.crypto import KeyVault, normalise
from store.db import Database
from store.errors import InvalidInput, NotFound
from store.models import ImportBatch, Key, KeyStatus, Product
from store.orders import fulfil_backorders

MAX_KEY_LENGTH = 1000
IMPORT_BATCH = 5000  # keys a transaction
# While the shop serves (an upload in the chat): smaller transactions, so SQLite's write
# lock is never held for long, and a worker thread that rests between bursts of work.
LIVE_BATCH = 500
_BLOCK = 64 * 1024  # bytes of an upload read and parsed at a time (a few ms of work)
_WORK, _PAUSE = 0.002, 0.002  # seconds of encryption, then of rest, while the shop serves
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


def parse_keys(data: bytes | str, *, is_csv: bool = False, first: bool = True) -> ParsedKeys:
    """One key per line: trimmed; blank, over-long and binary lines rejected.

    Bytes (an uploaded file) are decoded as UTF-8 line by line, so one bad line is rejected
    on its own instead of spoiling the file. A line in another encoding (Latin-1, GBK...) is
    counted as not UTF-8 rather than guessed at: a key decoded wrongly would be sold and not
    redeem. In a .csv the first column is the key and a header row is skipped.
    `first=False`: `data` continues a file, so its first line is neither the file's
    byte-order mark nor its header.
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
        if number == 0 and first:
            line = line.removeprefix("\ufeff")
        if is_csv and line.strip():
            fields = next(csv.reader([line]), [])
            line = fields[0] if fields else ""
            if number == 0 and first and re.sub(r"[\s_-]+", "", line.lower()) in _HEADERS:
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


class KeyFile:
    """An uploaded key file, parsed a block at a time: iterating yields `ParsedKeys` per block.

    Blocks end on a line break (a CR LF pair is never split), so every line is parsed whole.
    """

    def __init__(self, stream: BinaryIO, *, size: int, is_csv: bool) -> None:
        self._stream = stream
        self._size = size
        self._is_csv = is_csv
        self._parsed_bytes = 0
        self._parsed_keys = 0

    def __iter__(self) -> Iterator[ParsedKeys]:
        first, rest = True, b""
        while block := self._stream.read(_BLOCK):
            data = rest + block
            # A CR at the very end may be the first half of a CR LF: cut before it.
            limit = len(data) - 1 if data.endswith(b"\r") else len(data)
            end = max(data.rfind(b"\n", 0, limit), data.rfind(b"\r", 0, limit))
            if end < 0:
                rest = data  # a line longer than a block: keep reading
                continue
            data, rest = data[: end + 1], data[end + 1 :]
            yield self._parse(data, first)
            first = False
        if rest:
            yield self._parse(rest, first)

    def _parse(self, data: bytes, first: bool) -> ParsedKeys:
        parsed = parse_keys(data, is_csv=self._is_csv, first=first)
        self._parsed_bytes += len(data)
        self._parsed_keys += len(parsed.keys)
        return parsed

    def estimate(self) -> int:
        """Keys the whole file likely holds, from those in the part parsed so far."""
        if not self._parsed_bytes:
            return 0
        return round(self._parsed_keys * self._size / self._parsed_bytes)


@dataclass(frozen=True, slots=True)
class _Prepared:
    """One batch, ready to write: what was parsed, and (digest, ciphertext) of each distinct key."""

    parsed: ParsedKeys
    rows: list[tuple[bytes, bytes]]


def _batches(keys: ParsedKeys | Iterable[ParsedKeys], size: int) -> Iterator[ParsedKeys]:
    """Regroup parsed keys into batches of at most `size` keys, rejections included."""
    pending = ParsedKeys()
    for parsed in [keys] if isinstance(keys, ParsedKeys) else keys:
        pending.keys.extend(parsed.keys)
        pending.empty += parsed.empty
        pending.too_long += parsed.too_long
        pending.binary += parsed.binary
        pending.not_utf8 += parsed.not_utf8
        while len(pending.keys) >= size:
            rest = pending.keys[size:]
            del pending.keys[size:]
            yield pending
            pending = ParsedKeys(keys=rest)
    if pending.keys or pending.rejected:
        yield pending


def _prepare(batches: Iterator[ParsedKeys], vault: KeyVault, live: bool) -> _Prepared | None:
    """Parse, fingerprint and encrypt the next batch (CPU work: runs in a worker thread)."""
    parsed = next(batches, None)
    if parsed is None:
        return None
    unique: dict[bytes, str] = {}
    rows: list[tuple[bytes, bytes]] = []
    pause_at = time.monotonic() + _WORK
    for key in parsed.keys:
        digest = vault.digest(key)
        if digest not in unique:
            unique[digest] = key
            rows.append((digest, vault.encrypt(key)))
        if live and time.monotonic() >= pause_at:
            # Let go of the GIL now and then: the event loop's thread would otherwise wait
            # for it each time it wakes, and a webhook, which wakes it dozens of times, slows
            # by hundreds of milliseconds on a busy machine.
            time.sleep(_PAUSE)
            pause_at = time.monotonic() + _WORK
    return _Prepared(parsed, rows)


Progress = Callable[[int], Awaitable[None]]


async def restock(
    db: Database,
    vault: KeyVault,
    sku: str,
    keys: ParsedKeys | Iterable[ParsedKeys],
    *,
    source: str,
    admin_id: int | None = None,
    now: datetime | None = None,
    progress: Progress | None = None,
    live: bool = False,
) -> RestockReport:
    """Add keys to a product, batch by batch, and fill its backorders from them.

    `keys` is parsed keys, or an iterable of them such as a `KeyFile` (iterated in a worker
    thread). `progress(n)` is awaited after each committed batch with the keys handled so far.
    `live`: the shop is serving in this process, and its webhooks come first.
    """
    now = now or datetime.now(UTC)
    batches = _batches(keys, LIVE_BATCH if live else IMPORT_BATCH)
    prepared = await asyncio.to_thread(_prepare, batches, vault, live)
    # A batch without keys comes last: if the first has none, the import has none. Blank
    # lines are no more than nothing.
    if prepared is None or (
        not prepared.parsed.keys and prepared.parsed.rejected == prepared.parsed.empty
    ):
        raise InvalidInput("no keys found: send one key per line")
    batch_id: int | None = None
    seen = added = 0
    rejected = ParsedKeys()
    fulfilled: list[int] = []
    while prepared is not None:
        # The next batch is encrypted while this one is written.
        upcoming = asyncio.ensure_future(asyncio.to_thread(_prepare, batches, vault, live))
        try:
            batch_id, new, filled = await db.write(
                _store_batch, sku, batch_id, prepared, source, admin_id, now
            )
        except BaseException:
            await asyncio.gather(upcoming, return_exceptions=True)
            raise
        parsed = prepared.parsed
        seen += len(parsed.keys)
        added += new
        rejected.empty += parsed.empty
        rejected.too_long += parsed.too_long
        rejected.binary += parsed.binary
        rejected.not_utf8 += parsed.not_utf8
        fulfilled.extend(filled)
        if progress is not None:
            await progress(seen)
        prepared = await upcoming

    async def finish(session: AsyncSession) -> int:
        session.add(audit(admin_id, "keys.import", f"{sku}: {added} added via {source}"))
        return await session.scalar(
            select(func.count()).where(
                Key.product_id == select(Product.id).where(Product.sku == sku).scalar_subquery(),
                Key.status == KeyStatus.AVAILABLE,
            )
        )

    report = RestockReport(
        sku=sku,
        added=added,
        duplicates=seen - added,
        empty=rejected.empty,
        too_long=rejected.too_long,
        binary=rejected.binary,
        not_utf8=rejected.not_utf8,
        backorders_fulfilled=tuple(fulfilled),
        available=await db.write(finish),
    )
    if report.available:  # something left to buy after the backorders: tell who asked
        await watchers.restocked(db, sku, now=now)
    return report


async def _store_batch(
    session: AsyncSession,
    sku: str,
    batch_id: int | None,
    prepared: _Prepared,
    source: str,
    admin_id: int | None,
    now: datetime,
) -> tuple[int, int, list[int]]:
    """Write one batch: the import's id, the keys it added, the backorders it filled."""
    # Few statements: on SQLite every other writer waits for this transaction, and on a
    # busy machine each round trip to the database's thread costs milliseconds.
    product = await session.scalar(select(Product).where(Product.sku == sku).with_for_update())
    if product is None:
        raise NotFound(f"no product with SKU {sku}")
    product_id = product.id
    if batch_id is None:
        batch = ImportBatch(product_id=product_id, source=source, admin_id=admin_id, created_at=now)
        session.add(batch)
        await session.flush()
        batch_id = batch.id
    added = await _insert_new(session, product_id, batch_id, prepared.rows)
    await session.execute(
        update(ImportBatch)
        .where(ImportBatch.id == batch_id)
        .values(
            added=ImportBatch.added + added,
            duplicates=ImportBatch.duplicates + len(prepared.parsed.keys) - added,
            rejected=ImportBatch.rejected + prepared.parsed.rejected,
        )
    )
    return batch_id, added, list(await fulfil_backorders(session, product_id, now))


async def _insert_new(
    session: AsyncSession, product_id: int, batch_id: int, rows: list[tuple[bytes, bytes]]
) -> int:
    """Insert the keys the product never had; how many that was."""
    # ON CONFLICT DO NOTHING skips a key the product ever had (the unique digest decides, so
    # even two imports racing store it once). The rows go to the driver's executemany as
    # they are: SQLAlchemy would prepare each one's parameters on the event loop's thread,
    # a stall webhooks feel during big imports.
    if not rows:
        return 0
    connection = await session.connection()
    insert = _INSERT_KEYS[connection.dialect.paramstyle]
    values = [
        (product_id, batch_id, ciphertext, digest, KeyStatus.AVAILABLE.value)
        for digest, ciphertext in rows
    ]
    if connection.dialect.supports_sane_multi_rowcount:  # SQLite: rows inserted, conflicts not
        return (await connection.exec_driver_sql(insert, values)).rowcount
    # asyncpg reports no count for executemany: count on the unique index, before and after,
    # under the product's row lock that serialises imports of a product.
    keys = Key.__table__
    present = (
        select(func.count())
        .select_from(keys)
        .where(keys.c.product_id == product_id, keys.c.digest.in_([d for d, _ in rows]))
    )
    before = await connection.scalar(present)
    await connection.exec_driver_sql(insert, values)
    return await connection.scalar(present) - before


# By the driver's parameter style: aiosqlite's, asyncpg's.
_INSERT_KEYS = {
    style: "INSERT INTO keys (product_id, batch_id, ciphertext, digest, status) "
    f"VALUES ({marks}) ON CONFLICT (product_id, digest) DO NOTHING"
    for style, marks in {"qmark": "?, ?, ?, ?, ?", "numeric_dollar": "$1, $2, $3, $4, $5"}.items()
}


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
