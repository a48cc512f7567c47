"""One-time download links: a client order's keys, served once and audited, or e-mailed.

A link is issued with the order (store/client_orders.py); using it is one transaction
that marks it used by a conditional UPDATE (its row count checked) and audits every
attempt with the caller's IP, refusals included. The keys are decrypted afterwards, off
the event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from store import allocation
from store.audit import audit
from store.client_orders import HOLDS_KEYS
from store.clients import Caller, token_hash
from store.crypto import KeyVault
from store.db import Database
from store.errors import NotFound, StoreError
from store.models import (
    Download,
    Order,
    Product,
)


class DownloadRefused(StoreError):
    """A download link that is unknown, used, expired or not the caller's."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"download link {reason}")
        self.reason = reason  # "unknown", "used", "expired"


@dataclass(frozen=True, slots=True)
class Sheet:
    """An order's keys, for the spreadsheet a download or an e-mail carries."""

    order_id: int
    sku: str
    product_name: str
    keys: tuple[str, ...]

    def __repr__(self) -> str:  # never the keys
        return f"Sheet(order_id={self.order_id}, keys={len(self.keys)})"


async def take_download(
    db: Database,
    vault: KeyVault,
    token: str,
    *,
    ip: str,
    caller: Caller | None = None,
    now: datetime | None = None,
) -> Sheet:
    """Use a one-time link: the order's keys, once. Every attempt is audited with the IP.

    A caller that authenticated as another client is refused as if the link were unknown,
    and the link stays unused. Raises DownloadRefused.
    """
    moment = now or datetime.now(UTC)

    async def work(session: AsyncSession) -> tuple[str, Sheet | None, list[bytes]]:
        row = (
            await session.execute(
                select(Download, Order)
                .join(Order, Order.id == Download.order_id)
                .where(Download.token_hash == token_hash(token))
            )
        ).first()
        if row is None:
            session.add(audit(None, "api.download", f"unknown link from {ip}: refused"))
            return "unknown", None, []
        download, order = row
        reason = None
        if caller is not None and order.client_id != caller.id:
            reason = "unknown"
        elif download.used_at is not None:
            reason = "used"
        elif download.expires_at <= moment or order.status not in HOLDS_KEYS:
            reason = "expired"  # a refunded order's link ends with it
        if reason is None:
            taken = await session.execute(
                update(Download)
                .where(Download.id == download.id, Download.used_at.is_(None))
                .values(used_at=moment, used_ip=ip[:45])
                .execution_options(synchronize_session=False)
            )
            if taken.rowcount != 1:
                reason = "used"
        outcome = "served" if reason is None else f"refused ({reason})"
        session.add(
            audit(
                None,
                "api.download",
                f"order {order.id} link {download.id} from {ip}: {outcome}",
            )
        )
        if reason is not None:
            return reason, None, []
        product = await session.get(Product, order.product_id)
        found = await allocation.ciphertexts(session, [order])
        return "served", Sheet(order.id, product.sku, product.name, ()), found[order.id]

    reason, sheet, ciphertexts = await db.write(work)
    if sheet is None:
        raise DownloadRefused(reason)
    # Decrypt outside the transaction (the write lock is for database work only) and off
    # the event loop: 10,000 keys would stall every other request for tens of milliseconds.
    return await _decrypted(vault, sheet, ciphertexts)


async def order_sheet(db: Database, vault: KeyVault, order_id: int) -> Sheet:
    """An order's keys for its e-mail (the outbox worker's use)."""

    async def work(session: AsyncSession) -> tuple[Sheet, list[bytes]]:
        order = await session.get(Order, order_id)
        if order is None:
            raise NotFound(f"no order {order_id}")
        product = await session.get(Product, order.product_id)
        found = await allocation.ciphertexts(session, [order])
        return Sheet(order.id, product.sku, product.name, ()), found[order.id]

    sheet, ciphertexts = await db.read(work)
    return await _decrypted(vault, sheet, ciphertexts)


async def _decrypted(vault: KeyVault, sheet: Sheet, ciphertexts: list[bytes]) -> Sheet:
    keys = await asyncio.to_thread(lambda: tuple(vault.decrypt(c) for c in ciphertexts))
    return Sheet(sheet.order_id, sheet.sku, sheet.product_name, keys)
