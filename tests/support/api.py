"""A business client of a running shop: its account, and calls to /api/v1 over real HTTP."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from dataclasses import dataclass
from typing import Any

from openpyxl import load_workbook
from sqlalchemy import select

from store import clients
from store.models import Key
from tests.e2e.conftest import Shop
from tests.e2e.helpers import rows, vault


@dataclass
class Reply:
    status: int
    body: Any  # parsed JSON, or the raw bytes of a download
    headers: dict[str, str]

    @property
    def code(self) -> str | None:
        return (
            self.body["error"]["code"]
            if isinstance(self.body, dict) and "error" in self.body
            else None
        )


@dataclass
class ApiClient:
    """One client's view of the API: its token and the shop's HTTP address."""

    shop: Shop
    name: str
    token: str
    webhook_secret: str | None = None

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
        raw: bool = False,
    ) -> Reply:
        sent = {"Authorization": f"Bearer {token or self.token}", **(headers or {})}
        url = path if path.startswith("http") else f"{self.shop.url}/api/v1{path}"
        async with self.shop.http.request(method, url, json=body, headers=sent) as response:
            data = await response.read()
            parsed = data if raw else _json(data)
            return Reply(response.status, parsed, dict(response.headers))

    async def order(self, sku: str, quantity: int, key: str | None = None) -> Reply:
        return await self.call(
            "POST",
            "/orders",
            body={"sku": sku, "quantity": quantity},
            headers={"Idempotency-Key": key or uuid.uuid4().hex},
        )

    async def download(self, url: str, *, token: str | None = None, csv: bool = False) -> Reply:
        """Use a one-time link, without a token unless one is given (the link is the credential)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.shop.http.get(url + ("?format=csv" if csv else ""), headers=headers) as r:
            data = await r.read()
            body = data if r.status == 200 else _json(data)
            return Reply(r.status, body, dict(r.headers))


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data


async def add_client(shop: Shop, name: str = "acme", **options: Any) -> ApiClient:
    """A client made the way `keyvend client add` makes one (balance 1000.00 unless given)."""
    options.setdefault("balance", "1000.00")
    new = await clients.add_client(shop.db, name, **options)
    return ApiClient(shop, name, new.token, new.webhook_secret)


def xlsx_keys(data: bytes) -> list[str]:
    """The keys in a downloaded workbook (its third column, below the header)."""
    sheet = load_workbook(io.BytesIO(data), read_only=True).worksheets[0]
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0] == ("order", "sku", "key"), rows[0]
    return [row[2] for row in rows[1:]]


def csv_keys(data: bytes) -> list[str]:
    lines = data.decode().splitlines()
    assert lines[0] == "order,sku,key", lines[0]
    return [line.split(",", 2)[2] for line in lines[1:]]


async def together(*calls: Any) -> list[Any]:
    return list(await asyncio.gather(*calls))


async def sold_keys(shop: Shop, order_id: int) -> list[str]:
    """The keys the database gave an order, decrypted, in allocation order."""
    found = await rows(
        shop, select(Key.ciphertext).where(Key.order_id == order_id).order_by(Key.id)
    )
    return [vault(shop).decrypt(c) for (c,) in found]
