"""Pay links: the product card's "💳 Pay by card" button, opened in the buyer's browser.

A card's pay button is a URL to this server (`GET /pay/<token>`), not a button the bot has
to answer with a second message: during a flash sale every message shares Telegram's
bot-wide rate, so one message per buyer before payment is twice the buyers served. The
token is signed, so only the bot can make one, and names who buys what: buyer, product,
quantity, the language of the card, when it stops working, and the coupon code if one was entered.

Nothing is held while the card sits in the chat. Opening the link runs the same checkout as
every other path (`Shop.checkout`: the hoarding caps, the per-buyer limits, the checkout rate
limit), then answers 303 to the provider's payment page, or a small page with the one-line
reason there is none. Opening it again leads to the checkout it opened, holding nothing
more. A token that is not ours or has run out gets a 4xx, never a 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import html
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from aiohttp import web

from handlers import render
from handlers.context import SHOP
from handlers.i18n import DEFAULT, LANGUAGES, t
from store.errors import (
    Blacklisted,
    InvalidInput,
    NotFound,
    PaymentUnavailable,
    ProductInactive,
    StoreError,
)
from store.open_checkouts import open_checkout_url

ROUTE = "/pay/{token}"
# Long enough for a card posted this morning to work tonight; a card older than that shows a
# price and stock long gone, so the buyer opens the product again.
LINK_TTL = timedelta(hours=24)
_SIGNATURE_BYTES = 16  # 128 bits: forging one is out of reach, and the link stays short
# Checkouts a process opens at once for pay links. A sale's buyers arrive over HTTP all at
# once, and unbounded they would queue for database connections until the pool gives up
# (500s); under the pool's size, the rest wait their turn here instead.
_OPENING_AT_ONCE = 8


class BadLink(Exception):
    """Not a link this shop made (or made and since changed): nothing to act on."""


class LinkExpired(Exception):
    """A link this shop made, too old to use."""

    def __init__(self, language: str) -> None:
        super().__init__("pay link expired")
        self.language = language  # the card's, to say so in


@dataclass(frozen=True, slots=True)
class PayLink:
    buyer_id: int
    product_id: int
    quantity: int
    expires: int  # Unix time
    language: str
    coupon: str | None = None  # a code the buyer entered, carried into the checkout


@dataclass
class PayLinks:
    """Makes and reads the signed tokens; `base` is the shop's PUBLIC_URL."""

    base: str
    secret: bytes
    # Purchases being opened in this process: their lock, and how many requests want it.
    _opening: dict[tuple[int, int, int], tuple[asyncio.Lock, int]] = field(default_factory=dict)
    _gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(_OPENING_AT_ONCE))

    @classmethod
    def from_bot_token(cls, base: str, bot_token: str) -> PayLinks:
        """Keyed from the bot token, so every instance of the shop agrees without a setting,
        and a new token (a leak's remedy) retires every link made with the old one."""
        secret = hashlib.sha256(b"keyvend pay link " + bot_token.encode()).digest()
        return cls(base.rstrip("/"), secret)

    def url(
        self,
        *,
        buyer_id: int,
        product_id: int,
        quantity: int,
        language: str,
        coupon: str | None = None,
        now: float | None = None,
    ) -> str:
        expires = int((now or time.time()) + LINK_TTL.total_seconds())
        fields = [str(buyer_id), str(product_id), str(quantity), str(expires), language]
        if coupon:
            fields.append(_b64(coupon.encode()))
        body = ".".join(fields)
        return f"{self.base}/pay/{body}.{self._sign(body)}"

    def read(self, token: str, *, now: float | None = None) -> PayLink:
        """The link a token stands for; BadLink or LinkExpired say why not."""
        body, _, signature = token.rpartition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            raise BadLink("signature does not match")
        try:
            buyer, product, quantity, expires, language, *coupon = body.split(".")
            link = PayLink(
                int(buyer),
                int(product),
                int(quantity),
                int(expires),
                language,
                _unb64(coupon[0]).decode() if coupon else None,
            )
        except (ValueError, binascii.Error) as exc:  # signed by us, so a format we retired
            raise BadLink("unreadable") from exc
        if link.expires < (now or time.time()):
            raise LinkExpired(link.language)
        return link

    @asynccontextmanager
    async def opening(self, link: PayLink) -> AsyncIterator[None]:
        """One open of the same purchase at a time in this process, so a double tap finds
        the checkout the first tap opened instead of racing it to a second one; and a few
        opens in all at a time."""
        key = (link.buyer_id, link.product_id, link.quantity)
        lock, users = self._opening.get(key, (asyncio.Lock(), 0))
        self._opening[key] = (lock, users + 1)
        try:
            async with lock, self._gate:
                yield
        finally:
            lock, users = self._opening[key]
            if users == 1:
                del self._opening[key]
            else:
                self._opening[key] = (lock, users - 1)

    def _sign(self, body: str) -> str:
        digest = hmac.new(self.secret, b"pay:" + body.encode(), hashlib.sha256).digest()
        return _b64(digest[:_SIGNATURE_BYTES])


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def open_pay_link(request: web.Request) -> web.StreamResponse:
    """Open the buyer's checkout (or the one already open) and send them to its payment page."""
    shop = request.app[SHOP]
    links = shop.pay_links
    if links is None:  # no PUBLIC_URL: the shop makes no links, so this is none of ours
        raise web.HTTPNotFound()
    try:
        link = links.read(request.match_info["token"])
    except BadLink:
        return _page(400, DEFAULT, t(DEFAULT, "This payment link is not valid."))
    except LinkExpired as expired:
        language = _known(expired.language)
        return _page(
            410,
            language,
            t(language, "This payment link has expired: open the product in the chat again."),
        )
    language = _known(link.language)
    gateway = shop.card
    if gateway is None:
        return _page(404, language, t(language, "Payments are not set up yet in this shop."))
    async with links.opening(link):
        url = await open_checkout_url(
            shop.db,
            buyer_id=link.buyer_id,
            product_id=link.product_id,
            quantity=link.quantity,
            provider=gateway.name,
            coupon=link.coupon,
        )
        if url is None:
            retry_at = await shop.limiter.hit("checkouts", link.buyer_id)
            if retry_at is not None:
                return _page(429, language, render.try_again(retry_at, language))
            try:
                sale = await shop.checkout(
                    gateway,
                    buyer_id=link.buyer_id,
                    language=language,
                    product_id=link.product_id,
                    quantity=link.quantity,
                    coupon=link.coupon,
                )
            except StoreError as exc:
                return _page(_status(exc), language, render.checkout_refusal(exc, language))
            url = sale.url
    if url is None:  # a card provider always has a payment page; say so rather than guess
        return _page(503, language, render.checkout_refusal(PaymentUnavailable(""), language))
    raise web.HTTPSeeOther(url)


def _known(language: str) -> str:
    return language if language in LANGUAGES else DEFAULT


def _status(exc: StoreError) -> int:
    match exc:
        case Blacklisted():
            return 403
        case NotFound() | ProductInactive():
            return 404
        case InvalidInput():
            return 400
        case PaymentUnavailable():
            return 503
    return 409  # sold out, or a limit this buyer reached: the state of the shop says no


def _page(status: int, language: str, reason: str) -> web.Response:
    """A page with the one-line reason, readable on a phone."""
    back = t(language, "You can close this page and go back to the chat.")
    body = (
        f'<!doctype html><html lang="{language}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(reason)}</title></head>"
        '<body style="font-family: sans-serif; margin: 2em auto; max-width: 32em">'
        f"<p>{html.escape(reason)}</p><p>{html.escape(back)}</p></body></html>"
    )
    return web.Response(status=status, text=body, content_type="text/html")
