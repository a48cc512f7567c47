"""The delivery worker: sends queued deliveries to buyers' chats and records how it went.

It claims due deliveries with a lease, sends each one (one chat at a time per chat, at
most one message a second to a chat; the bot-wide pace is `bot.telegram_api.SendPace`,
which also waits out 429s), and records outcomes in batches. A network error or a 5xx is retried
with exponential backoff; a 429 after the limiter's own retries is rescheduled for when
Telegram allows; a chat that blocked the bot, or a delivery out of retries, is marked
undeliverable and the admins are told — the keys stay in the buyer's "my orders".

The one window for a duplicate is a crash between Telegram accepting a message and the
outcome being committed: the lease lapses and the message is sent again. A lost key is
not possible: nothing is marked sent before Telegram accepted it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import UTC, datetime, timedelta

from telegram import Bot, LinkPreviewOptions
from telegram.constants import ParseMode
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError

from bot.metrics import Metrics
from bot.telegram_api import retry_after
from bot.waiting import wait_any
from handlers import render
from handlers.alerts import AlertKind
from handlers.context import Shop
from handlers.i18n import t
from store import deliveries
from store.deliveries import Done, Job, Outcome
from store.models import DeliveryKind

log = logging.getLogger(__name__)

_KEY_KINDS = (DeliveryKind.KEYS, DeliveryKind.RESHOW)
# Do not start a send this close to the end of a lease: another worker may take it over.
_LEASE_MARGIN = timedelta(seconds=10)
_MAX_BACKOFF = 300.0
_RECORD_GATHER = 0.05  # seconds


class DeliveryWorker:
    def __init__(
        self,
        shop: Shop,
        bot: Bot,
        metrics: Metrics,
        *,
        owner: str,
        max_attempts: int,
        batch: int = 100,
        max_in_flight: int = 200,
        lease: timedelta = timedelta(seconds=60),
        chat_interval: float = 1.0,
        idle_poll: float = 1.0,
    ) -> None:
        self._shop = shop
        self._bot = bot
        self._metrics = metrics
        self.owner = owner
        self._max_attempts = max_attempts
        self._batch = batch
        self._max_in_flight = max_in_flight
        self._lease = lease
        self._margin = min(_LEASE_MARGIN, lease / 4)
        self._chat_interval = chat_interval
        self._idle_poll = idle_poll
        self._wake = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        # Lease end of every delivery being sent, kept current by `_renew`.
        self._leases: dict[int, datetime] = {}
        self._chats: dict[int, tuple[asyncio.Lock, int]] = {}  # lock and how many jobs use it
        self._last_send: dict[int, float] = {}
        self._done: list[Done] = []
        self._done_ready = asyncio.Event()
        self._closing = asyncio.Event()

    def wake(self) -> None:
        """Something was queued: look now rather than at the next poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and send until `stop` is set; then finish what is in flight and record it."""
        recorder = asyncio.create_task(self._record(), name="delivery-recorder")
        renewer = asyncio.create_task(self._renew(), name="delivery-lease-renewal")
        try:
            while not stop.is_set():
                self._wake.clear()  # before claiming: a wake-up during the claim means "look again"
                room = self._max_in_flight - len(self._in_flight)
                if room < self._batch:
                    # Refill in batches, not a claim per finished send: wait for sends to end.
                    self._slot_free.clear()
                    await wait_any(self._slot_free, stop, timeout=self._idle_poll)
                    continue
                try:
                    jobs = await deliveries.claim(
                        self._shop.db,
                        self._shop.vault,
                        self.owner,
                        limit=self._batch,
                        lease=self._lease,
                    )
                except Exception:  # the database may come back; keep the worker alive
                    log.exception("claiming deliveries failed; retrying")
                    await asyncio.sleep(1.0)
                    continue
                for job in jobs:
                    if job.id in self._leases:
                        # Still sending it (a 429 or the rate queue held it past its lease):
                        # the claim only renewed our lease, one send is under way.
                        self._leases[job.id] = job.lease_expires_at
                        continue
                    self._leases[job.id] = job.lease_expires_at
                    task = asyncio.create_task(self._deliver(job), name=f"delivery-{job.id}")
                    self._in_flight.add(task)
                    task.add_done_callback(self._sent)
                if len(jobs) < self._batch:
                    await wait_any(self._wake, stop, timeout=self._idle_poll)
        finally:
            if self._in_flight:
                await asyncio.wait(self._in_flight, timeout=10)
            self._closing.set()
            await recorder
            renewer.cancel()

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slot_free.set()

    async def _deliver(self, job: Job) -> None:
        lock, users = self._chats.get(job.chat_id, (asyncio.Lock(), 0))
        self._chats[job.chat_id] = (lock, users + 1)
        try:
            async with lock:  # one send at a time per chat, in claim order
                done = await self._send(job)
        finally:
            self._leases.pop(job.id, None)
            lock, users = self._chats[job.chat_id]
            if users == 1:
                del self._chats[job.chat_id]
            else:
                self._chats[job.chat_id] = (lock, users - 1)
        if done is not None:
            self._metrics.count("keyvend_deliveries_total", outcome=done.outcome.value)
            self._done.append(done)
            self._done_ready.set()

    async def _send(self, job: Job) -> Done | None:
        language = job.language
        screens = render.delivery(job, self._shop.key_message_ttl, language)
        message_ids: list[int] = []
        try:
            for screen in screens:
                await self._pace(job.chat_id)
                if (
                    datetime.now(UTC)
                    > self._leases.get(job.id, job.lease_expires_at) - self._margin
                ):
                    return None  # lease nearly over: let whoever claims it next send it
                message = await self._bot.send_message(
                    job.chat_id,
                    screen.text,
                    reply_markup=screen.keyboard,
                    parse_mode=ParseMode.HTML,
                    protect_content=job.kind in _KEY_KINDS,
                    allow_paid_broadcast=(job.kind in _KEY_KINDS and self._shop.paid_broadcast)
                    or None,
                    link_preview_options=LinkPreviewOptions(is_disabled=True),
                )
                message_ids.append(message.message_id)
        except RetryAfter as exc:
            self._metrics.count("keyvend_telegram_retry_after_total")
            return Done(
                job,
                Outcome.RETRY,
                retry_at=_after(retry_after(exc)),
                error="429 Too Many Requests",
                count_attempt=False,
            )
        except Forbidden as exc:
            return self._undeliverable(job, f"Forbidden: {exc.message}"[:200])
        except BadRequest as exc:
            # The chat is gone, or the message is malformed: retrying will not change either.
            return self._undeliverable(job, f"Bad Request: {exc.message}"[:200])
        except (NetworkError, TelegramError, OSError) as exc:
            return self._retry(job, f"{type(exc).__name__}: {exc}"[:200])
        except Exception as exc:  # never lose a delivery to an unexpected error
            log.exception("delivery %s failed unexpectedly", job.id)
            return self._retry(job, type(exc).__name__)
        return Done(job, Outcome.SENT, message_ids=tuple(message_ids))

    def _retry(self, job: Job, error: str) -> Done:
        if job.attempts + 1 >= self._max_attempts:
            return self._undeliverable(job, error)
        backoff = min(_MAX_BACKOFF, 2.0**job.attempts) * (0.5 + random.random())
        log.info("delivery %s failed (%s); retrying in %.1fs", job.id, error, backoff)
        return Done(job, Outcome.RETRY, retry_at=_after(backoff), error=error)

    def _undeliverable(self, job: Job, error: str) -> Done:
        log.warning("delivery %s to chat %s is undeliverable: %s", job.id, job.chat_id, error)
        if job.kind in _KEY_KINDS:
            self._shop.notifier.alert(
                AlertKind.UNDELIVERABLE,
                lambda lang: t(
                    lang,
                    "Order #{order}: keys could not be delivered to buyer {buyer} ({error}). "
                    "They remain in the buyer's /orders.",
                    order=job.order_id,
                    buyer=job.chat_id,
                    error=error,
                ),
            )
        elif job.kind is not DeliveryKind.RESTOCKED:  # a restock notice is no loss to anyone
            self._shop.notifier.alert(
                AlertKind.UNDELIVERABLE,
                lambda lang: t(
                    lang,
                    "Order #{order}: a {kind} notice could not be delivered ({error}).",
                    order=job.order_id,
                    kind=job.kind,
                    error=error,
                ),
            )
        return Done(job, Outcome.UNDELIVERABLE, error=error)

    async def _pace(self, chat_id: int) -> None:
        """At most one message a second to a chat, as Telegram asks."""
        wait = self._last_send.get(chat_id, 0.0) + self._chat_interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self._last_send[chat_id] = time.monotonic()
        if len(self._last_send) > 10_000:
            horizon = time.monotonic() - self._chat_interval
            self._last_send = {c: t for c, t in self._last_send.items() if t > horizon}

    async def _renew(self) -> None:
        """Keep the leases of in-flight deliveries from running out under a slow send."""
        while True:
            await asyncio.sleep(self._lease.total_seconds() / 3)
            ids, now = list(self._leases), datetime.now(UTC)
            try:
                held = await deliveries.renew(
                    self._shop.db, self.owner, ids, lease=self._lease, now=now
                )
            except Exception:  # the lease may lapse; a taker-over sends it then
                log.exception("renewing delivery leases failed")
                continue
            lease_end = now + self._lease
            for delivery_id in ids:
                if delivery_id in self._leases:
                    self._leases[delivery_id] = (
                        lease_end if delivery_id in held else datetime.min.replace(tzinfo=UTC)
                    )

    async def _record(self) -> None:
        """Write outcomes back in batches: one transaction for everything finished meanwhile."""
        while not (self._closing.is_set() and not self._done):
            await wait_any(self._done_ready, self._closing, timeout=1.0)
            if not self._closing.is_set():
                # Let more sends finish: one transaction records them all (each recording
                # costs a write transaction; a few milliseconds of waiting costs nothing).
                await asyncio.sleep(_RECORD_GATHER)
            self._done_ready.clear()
            if not self._done:
                continue
            batch, self._done = self._done, []
            try:
                await deliveries.finish(
                    self._shop.db, self.owner, batch, key_message_ttl=self._shop.key_message_ttl
                )
            except Exception:  # keep the outcomes and try again
                log.exception("recording %d delivery outcomes failed; retrying", len(batch))
                self._done = batch + self._done
                await asyncio.sleep(0.5)
                continue
            now = datetime.now(UTC)
            for done in batch:
                if done.outcome is Outcome.SENT:
                    self._metrics.delivery_lag_seconds.observe(
                        (now - done.job.queued_at).total_seconds()
                    )


def _after(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)
