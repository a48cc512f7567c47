"""The business API under /api/v1: thin routes that parse, call store/client_*.py, render JSON.

Every answer is JSON; every error is `{"error": {"code": ..., "message": ...}}` with a
stable code and a 4xx for anything the caller can fix. Callers are authenticated by
`Authorization: Bearer <token>` and rate-limited per address (before authentication) and
per token, with `Retry-After`. The only route without a token is the one-time download
link, which is its own credential. Keys appear in no response but the download itself,
and in no log line. The routes are documented in handlers/openapi.py, which must match.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiohttp import web

from handlers import openapi, sheets
from handlers.alerts import AlertKind
from handlers.context import SHOP, Limiter, Shop
from handlers.i18n import t
from store import client_downloads, client_orders, client_outbox, clients
from store.client_downloads import DownloadRefused
from store.client_orders import (
    ClientOrder,
    IdempotencyConflict,
    InsufficientBalance,
    NotInReview,
)
from store.clients import Caller
from store.errors import InvalidInput, NotFound, OutOfStock, ProductInactive, StoreError
from store.money import to_major

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
_MAX_EVENTS = 1000


@dataclass(frozen=True, slots=True)
class ApiConfig:
    download_ttl: timedelta
    email: bool  # an SMTP server is configured: clients with an address get e-mail
    public_url: str | None  # where download links point; unset: the address the caller used


API: web.AppKey[ApiConfig] = web.AppKey("api", ApiConfig)
CALLER: web.AppKey[Caller] = web.AppKey("caller", Caller)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def error(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


_STORE_ERRORS: list[tuple[type[StoreError], int, str]] = [
    (IdempotencyConflict, 409, "idempotency_conflict"),
    (InsufficientBalance, 402, "insufficient_balance"),
    (OutOfStock, 409, "out_of_stock"),
    (ProductInactive, 409, "product_unavailable"),
    (NotInReview, 409, "no_keys"),
    (NotFound, 404, "not_found"),
    (InvalidInput, 400, "invalid_request"),
]


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Limit by address, turn every failure into the JSON error shape."""
    try:
        await _limit(request, "api_ip", _address_number(request.remote))
        return await handler(request)
    except ApiError as exc:
        return error(exc.status, exc.code, exc.message, exc.headers)
    except DownloadRefused as exc:
        if exc.reason == "unknown":
            return error(404, "not_found", "no such download link")
        return error(410, f"download_{exc.reason}", f"this download link is {exc.reason}")
    except StoreError as exc:
        for kind, status, code in _STORE_ERRORS:
            if isinstance(exc, kind):
                return error(status, code, str(exc))
        raise
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status, "invalid_request"
        )
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error(exc.status, code, exc.reason, allow)


def _address_number(remote: str | None) -> int:
    """The caller's IP as a number: the rate limiter's key for it."""
    try:
        return int(ipaddress.ip_address(remote or "0.0.0.0"))
    except ValueError:
        return 0


async def _limit(request: web.Request, bucket: str, who: int) -> None:
    limiter: Limiter = request.config_dict[SHOP].limiter
    until = await limiter.hit(bucket, who)
    if until is not None:
        wait = max(1, math.ceil((until - datetime.now(UTC)).total_seconds()))
        raise ApiError(
            429, "rate_limited", "too many requests; slow down", {"Retry-After": str(wait)}
        )


async def _authenticate(request: web.Request) -> Caller:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    caller = None
    if scheme.lower() == "bearer" and token.strip():
        caller = await clients.authenticate(_shop(request).db, token.strip())
    if caller is None:
        raise ApiError(
            401,
            "unauthorized",
            "missing or unknown API token (Authorization: Bearer <token>)",
            {"WWW-Authenticate": "Bearer"},
        )
    await _limit(request, "api_token", caller.id)
    return caller


def _shop(request: web.Request) -> Shop:
    return request.config_dict[SHOP]


# ---------------------------------------------------------------- routes


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(openapi.document())


async def products(request: web.Request) -> web.Response:
    """The catalogue a client can order from, with stock available now."""
    await _authenticate(request)
    offers = await client_orders.offers(_shop(request).db)
    return web.json_response(
        {
            "data": [
                {
                    "sku": o.sku,
                    "name": o.name,
                    "price": str(to_major(o.price_minor, o.currency)),
                    "currency": o.currency,
                    "available": o.available,
                }
                for o in offers
            ]
        }
    )


async def create_order(request: web.Request) -> web.Response:
    """Order keys, paid from the balance; the Idempotency-Key makes retries safe."""
    caller = await _authenticate(request)
    key = request.headers.get("Idempotency-Key")
    if not key:
        raise ApiError(400, "idempotency_key_required", "send an Idempotency-Key header")
    sku, quantity = _order_body(await _json(request))
    config = request.config_dict[API]
    shop = _shop(request)
    placed = await client_orders.place_order(
        shop.db,
        shop.vault,
        caller,
        key,
        sku,
        quantity,
        download_ttl=config.download_ttl,
        email=config.email,
    )
    if not placed.replayed:
        _announce(shop, placed.order)
    headers = {"Idempotent-Replayed": "true"} if placed.replayed else None
    return web.json_response(_order_json(request, placed.order), status=201, headers=headers)


def _announce(shop: Shop, order: ClientOrder) -> None:
    shop.counters.count("keyvend_api_orders_total", status=order.status.value)
    if order.status == "review":
        shop.notifier.alert(
            AlertKind.REVIEW,
            lambda lang: t(
                lang,
                "Client order #{order} ({quantity}× {sku}) is over the client's review "
                "threshold: held for review (keyvend client review {order} --approve).",
                order=order.id,
                quantity=order.quantity,
                sku=order.sku,
            ),
        )
    else:
        shop.wake_client_outbox()


async def get_order(request: web.Request) -> web.Response:
    """An order's status and, once fulfilled, its one-time download link."""
    return await _order_response(request, new_link=False)


async def new_download(request: web.Request) -> web.Response:
    """A new one-time download link for a fulfilled order (the previous one stops working)."""
    return await _order_response(request, new_link=True, status=201)


async def _order_response(request: web.Request, *, new_link: bool, status: int = 200):
    caller = await _authenticate(request)
    order_id = _order_id(request)
    shop = _shop(request)
    order = await client_orders.order_status(
        shop.db,
        shop.vault,
        caller,
        order_id,
        download_ttl=request.config_dict[API].download_ttl,
        new_link=new_link,
    )
    return web.json_response(_order_json(request, order), status=status)


async def events(request: web.Request) -> web.Response:
    """The caller's events after `after`, oldest first: to catch up on missed callbacks."""
    caller = await _authenticate(request)
    after = _int_param(request, "after", 0, minimum=0)
    limit = _int_param(request, "limit", 100, minimum=1, maximum=_MAX_EVENTS)
    found = await client_outbox.events(_shop(request).db, caller.id, after=after, limit=limit + 1)
    return web.json_response(
        {"data": [e.payload() for e in found[:limit]], "has_more": len(found) > limit}
    )


async def download(request: web.Request) -> web.Response:
    """Serve an order's keys once through a one-time link (.xlsx, or .csv with ?format=csv)."""
    form = request.query.get("format", "xlsx")
    if form not in ("xlsx", "csv"):
        raise ApiError(400, "invalid_request", "format must be xlsx or csv")
    caller = None
    if "Authorization" in request.headers:
        caller = await _authenticate(request)
    shop = _shop(request)
    sheet = await client_downloads.take_download(
        shop.db, shop.vault, request.match_info["token"], ip=request.remote or "", caller=caller
    )
    # Off the event loop, CSV too: 10,000 rows would hold up every other request.
    build, content_type = (
        (sheets.csv_bytes, sheets.CSV) if form == "csv" else (sheets.xlsx, sheets.XLSX)
    )
    body = await asyncio.to_thread(build, sheet)
    return web.Response(
        body=body,
        content_type=content_type,
        charset="utf-8" if form == "csv" else None,
        headers={
            "Content-Disposition": f'attachment; filename="{sheets.filename(sheet, form)}"',
            "Cache-Control": "no-store",
        },
    )


# ---------------------------------------------------------------- parsing and rendering


async def _json(request: web.Request) -> object:
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_request", "the body is not JSON") from None


def _order_body(body: object) -> tuple[str, int]:
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", 'send {"sku": "...", "quantity": N}')
    sku, quantity = body.get("sku"), body.get("quantity")
    if not isinstance(sku, str) or not 1 <= len(sku) <= 64:
        raise ApiError(400, "invalid_request", "sku must be a product's SKU")
    if not isinstance(quantity, int) or isinstance(quantity, bool):
        raise ApiError(400, "invalid_request", "quantity must be a whole number")
    if not 1 <= quantity <= client_orders.MAX_QUANTITY:
        raise ApiError(
            400, "invalid_request", f"quantity must be between 1 and {client_orders.MAX_QUANTITY}"
        )
    return sku, quantity


def _order_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        raise ApiError(404, "not_found", f"no order {raw[:20]}")
    return int(raw)


def _int_param(
    request: web.Request, name: str, default: int, *, minimum: int, maximum: int = 2**31 - 1
) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not minimum <= int(raw) <= maximum:
        raise ApiError(
            400, "invalid_request", f"{name} must be a whole number from {minimum} to {maximum}"
        )
    return int(raw)


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def _order_json(request: web.Request, order: ClientOrder) -> dict:
    url = None
    if order.download_token is not None:
        base = request.config_dict[API].public_url or str(request.url.origin())
        url = f"{base.rstrip('/')}{PREFIX}/downloads/{order.download_token}"
    return {
        "id": order.id,
        "sku": order.sku,
        "quantity": order.quantity,
        "status": order.status.value,
        "amount": str(to_major(order.amount_minor, order.currency)),
        "currency": order.currency,
        "created_at": _time(order.created_at),
        "fulfilled_at": _time(order.fulfilled_at),
        "download_url": url,
        "download_expires_at": _time(order.download_expires_at),
    }


def build(config: ApiConfig) -> web.Application:
    """The /api/v1 sub-application (the shop and limiter come from the parent app)."""
    app = web.Application(middlewares=[guard])
    app[API] = config
    app.router.add_get("/openapi.json", openapi_document)
    app.router.add_get("/products", products)
    app.router.add_post("/orders", create_order)
    app.router.add_get("/orders/{id}", get_order)
    app.router.add_post("/orders/{id}/download", new_download)
    app.router.add_get("/events", events)
    app.router.add_get("/downloads/{token}", download)
    return app
