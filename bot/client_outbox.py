"""The clients' outbox worker: signed webhook calls and e-mailed spreadsheets, retried.

It claims due rows of `client_deliveries` with a lease (store/client_outbox.py), sends
each, and records the outcome. A webhook call is a POST of the event's JSON, signed the way
Stripe signs its own: the header `Keyvend-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
"<t>.<body>" under the client's signing secret>`; any 2xx is delivered. An e-mail carries
the order's keys as an .xlsx attachment, sent through `SMTP_URL` with aiosmtplib. A failure
is retried with exponential backoff, the first retry within seconds and the gap growing to
a day; after `max_attempts` the row is marked undeliverable and the admins are told (the
client still has the event in /api/v1/events and the download link).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

import aiohttp
import aiosmtplib

from bot.metrics import Metrics
from bot.waiting import wait_any
from handlers import sheets
from handlers.alerts import AlertKind
from handlers.context import Shop
from handlers.i18n import t
from store import client_downloads, client_outbox
from store.client_outbox import Dispatch, Done, Outcome

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Keyvend-Signature"
_MAX_BACKOFF = 86_400.0  # a day


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header's value for `body` sent at `timestamp`."""
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass(frozen=True, slots=True)
class Smtp:
    hostname: str
    port: int
    username: str | None
    password: str | None
    tls: bool  # smtps://: TLS from the start; smtp://: STARTTLS when the server offers it
    sender: str

    def __repr__(self) -> str:
        return f"Smtp({self.hostname}:{self.port})"

    @classmethod
    def from_url(cls, url: str, sender: str) -> Smtp:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("SMTP_URL must look like smtp://user:password@host:587")
        tls = parts.scheme == "smtps"
        return cls(
            hostname=parts.hostname,
            port=parts.port or (465 if tls else 587),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
            sender=sender,
        )


class ClientOutboxWorker:
    def __init__(
        self,
        shop: Shop,
        metrics: Metrics,
        *,
        owner: str,
        smtp: Smtp | None,
        max_attempts: int = 16,
        retry_base: float = 2.0,
        batch: int = 50,
        lease: timedelta = timedelta(seconds=120),
        idle_poll: float = 1.0,
    ) -> None:
        self._shop = shop
        self._metrics = metrics
        self.owner = owner
        self._smtp = smtp
        self.max_attempts = max_attempts
        self.retry_base = retry_base  # seconds before the first retry; tests shorten it
        self._batch = batch
        self._lease = lease
        self.idle_poll = idle_poll
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and send until `stop` is set."""
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not stop.is_set():
                self._wake.clear()
                try:
                    jobs = await client_outbox.claim(
                        self._shop.db, self.owner, limit=self._batch, lease=self._lease
                    )
                    if jobs:
                        done = await asyncio.gather(*(self._send(http, job) for job in jobs))
                        await client_outbox.finish(self._shop.db, self.owner, list(done))
                except Exception:  # the database may come back; keep the worker alive
                    log.exception("client outbox pass failed; retrying")
                    await wait_any(stop, timeout=1.0)
                    continue
                if len(jobs) < self._batch:
                    await wait_any(self._wake, stop, timeout=self._next_wait())

    def _next_wait(self) -> float:
        return min(self.idle_poll, max(self.retry_base, 0.05))

    async def _send(self, http: aiohttp.ClientSession, job: Dispatch) -> Done:
        try:
            if job.channel == "webhook":
                await self._post(http, job)
            else:
                await self._mail(job)
        except Exception as exc:  # noqa: BLE001 - any failure is retried; none may lose the row
            error = f"{type(exc).__name__}: {exc}"[:200]
            return self._failed(job, error)
        self._metrics.count("keyvend_client_deliveries_total", channel=job.channel, outcome="sent")
        return Done(job, Outcome.SENT)

    async def _post(self, http: aiohttp.ClientSession, job: Dispatch) -> None:
        if not job.webhook_url or not job.webhook_secret:
            raise RuntimeError("the client has no webhook any more")
        body = json.dumps(job.event.payload(), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(job.webhook_secret, body, int(time.time())),
            "User-Agent": "keyvend-webhooks",
        }
        async with http.post(job.webhook_url, data=body, headers=headers) as response:
            await response.read()
            if not 200 <= response.status < 300:
                raise RuntimeError(f"the webhook answered HTTP {response.status}")

    async def _mail(self, job: Dispatch) -> None:
        if self._smtp is None or not job.email:
            raise RuntimeError("no SMTP server or no address")
        sheet = await client_downloads.order_sheet(
            self._shop.db, self._shop.vault, job.event.order_id
        )
        attachment = await asyncio.to_thread(sheets.xlsx, sheet)
        message = EmailMessage()
        message["From"] = self._smtp.sender
        message["To"] = job.email
        message["Subject"] = f"Your keys: order #{sheet.order_id} ({len(sheet.keys)} × {sheet.sku})"
        message.set_content(
            f"Order #{sheet.order_id}: {len(sheet.keys)} × {sheet.product_name} ({sheet.sku}).\n"
            "The keys are in the attached spreadsheet.\n"
        )
        maintype, subtype = sheets.XLSX.split("/")
        message.add_attachment(
            attachment, maintype=maintype, subtype=subtype, filename=sheets.filename(sheet, "xlsx")
        )
        await aiosmtplib.send(
            message,
            hostname=self._smtp.hostname,
            port=self._smtp.port,
            username=self._smtp.username,
            password=self._smtp.password,
            use_tls=self._smtp.tls,
            timeout=30,
        )

    def _failed(self, job: Dispatch, error: str) -> Done:
        if job.attempts + 1 >= self.max_attempts:
            self._metrics.count(
                "keyvend_client_deliveries_total", channel=job.channel, outcome="undeliverable"
            )
            attempts = job.attempts + 1
            self._shop.notifier.alert(
                AlertKind.UNDELIVERABLE,
                lambda lang: t(
                    lang,
                    "Client {client}: the {channel} for order #{order} failed {n} times and was "
                    "given up ({error}).",
                    client=job.client_name,
                    channel=job.channel,
                    order=job.event.order_id,
                    n=attempts,
                    error=error,
                ),
            )
            return Done(job, Outcome.FAILED, error=error)
        self._metrics.count("keyvend_client_deliveries_total", channel=job.channel, outcome="retry")
        backoff = min(_MAX_BACKOFF, self.retry_base * 3.0**job.attempts) * (
            0.75 + random.random() / 2
        )
        log.info(
            "client %s %s %s failed (%s); retrying in %.1fs",
            job.client_name,
            job.channel,
            job.id,
            error,
            backoff,
        )
        return Done(
            job, Outcome.RETRY, retry_at=datetime.now(UTC) + timedelta(seconds=backoff), error=error
        )
