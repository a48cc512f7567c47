"""Admin alerts: one notifier for everything that needs a human, storms folded into summaries.

`alert()` never blocks and never fails the caller: alerts are queued and a background task
sends them to every admin, each in the admin's language (with its buttons, if it has any),
and, when `ALERT_WEBHOOK_URL` is
set, POSTs them in English as Slack-compatible JSON (`{"text": ...}`), retried with backoff
by a task of its own so a slow webhook never holds up the chats. Per kind of alert, the
first few of a window go out as they are; the rest are only counted, and when the window
ends they become one summary; while a storm lasts it is one summary per window, so a
thousand failures are a handful of messages, not a flood that would itself hit Telegram's
limits. Memory stays bounded: held alerts are counts, not texts.

Alerts are about orders, never contain key text, and are a convenience on top of state the
database already holds (`keyvend check`, `/stats`), so losing queued alerts in a crash
loses no information. The webhook address is a credential and is never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import aiohttp
from telegram import InlineKeyboardMarkup

from bot.metrics import Metrics
from bot.waiting import wait_any
from handlers.alerts import AlertButtons, AlertKind, AlertText, summary
from handlers.i18n import DEFAULT

log = logging.getLogger(__name__)

Send = Callable[[int, str, InlineKeyboardMarkup | None], Awaitable[object]]
# The language of each admin the shop knows (an admin it never saw gets English).
Languages = Callable[[], Awaitable[Mapping[int, str]]]

_WEBHOOK_TIMEOUT = aiohttp.ClientTimeout(total=10)


async def _no_languages() -> Mapping[int, str]:
    return {}


@dataclass(slots=True)
class _Window:
    start: float
    sent: int = 0  # alerts of this kind sent as they are in this window
    held: int = 0  # alerts of this kind only counted, for the window's summary


class AdminNotifier:
    def __init__(
        self,
        send: Send,
        admin_ids: Iterable[int],
        metrics: Metrics,
        *,
        languages: Languages = _no_languages,
        webhook_url: str | None = None,
        window: float = 60.0,
        burst: int = 5,
        webhook_attempts: int = 4,
        webhook_backoff: float = 1.0,
    ) -> None:
        self._send = send
        self._admins = tuple(admin_ids)
        self._metrics = metrics
        self._languages = languages
        self._webhook_url = webhook_url
        self._window = window
        self._burst = burst
        self._webhook_attempts = webhook_attempts
        self._webhook_backoff = webhook_backoff
        self._queue: list[tuple[AlertText, AlertButtons | None]] = []
        self._windows: dict[AlertKind, _Window] = {}
        self._wake = asyncio.Event()
        self._webhook_queue: asyncio.Queue[str | None] = asyncio.Queue()

    def alert(self, kind: AlertKind, text: AlertText, buttons: AlertButtons | None = None) -> None:
        """Tell the admins (now, or counted into this window's summary of `kind`)."""
        log.info("admin alert (%s): %s", kind, text(DEFAULT).splitlines()[0])
        self._metrics.count("keyvend_alerts_total", kind=kind)
        window = self._roll(kind, time.monotonic())
        if window.sent < self._burst:
            window.sent += 1
            self._queue.append((text, buttons))
        else:
            window.held += 1
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Send queued alerts until `stop` is set (then send what is left, summaries too)."""
        webhook = asyncio.create_task(self._post_webhooks(), name="alert-webhook")
        try:
            while not stop.is_set():
                await wait_any(self._wake, stop, timeout=self._until_next_summary())
                self._wake.clear()
                now = time.monotonic()
                for kind in list(self._windows):
                    self._roll(kind, now)
                await self.flush()
            for kind in list(self._windows):
                self._roll(kind, time.monotonic(), force=True)
            await self.flush()
        finally:
            self._webhook_queue.put_nowait(None)
            try:
                await asyncio.wait_for(webhook, timeout=15)
            except TimeoutError:
                log.warning("alert webhook still retrying at shutdown; the rest is dropped")

    async def flush(self) -> None:
        """Send every queued alert to every admin, in the admin's language."""
        batch, self._queue = self._queue, []
        if not batch:
            return
        try:
            languages = await self._languages()
        except Exception:  # noqa: BLE001 - the database may be down: English beats no alert
            log.warning("could not read the admins' languages; alerting in English")
            languages = {}
        for text, buttons in batch:
            if self._webhook_url is not None:
                self._webhook_queue.put_nowait(text(DEFAULT))
            for admin in self._admins:
                language = languages.get(admin, DEFAULT)
                try:
                    await self._send(admin, text(language), buttons and buttons(language))
                except Exception:  # an alert that cannot be sent must not stop the rest
                    log.warning("could not send an alert to admin %s", admin, exc_info=True)

    def _roll(self, kind: AlertKind, now: float, *, force: bool = False) -> _Window:
        """The current window of `kind`; a window that ended queues its summary first."""
        window = self._windows.get(kind)
        if window is None:
            window = self._windows[kind] = _Window(now)
        elif force or now - window.start >= self._window:
            if window.held:
                self._queue.append((summary(kind, window.held), None))
                # Still storming: the next window holds from its first alert.
                self._windows[kind] = window = _Window(now, sent=self._burst)
            elif not force:
                self._windows[kind] = window = _Window(now)
        return window

    def _until_next_summary(self) -> float:
        held = [w.start for w in self._windows.values() if w.held]
        if not held:
            return self._window
        return max(0.0, min(held) + self._window - time.monotonic())

    async def _post_webhooks(self) -> None:
        """POST each alert to the webhook in order, retrying each a few times."""
        if self._webhook_url is None:
            await self._webhook_queue.get()  # only the stop marker ever comes
            return
        async with aiohttp.ClientSession(timeout=_WEBHOOK_TIMEOUT) as http:
            while (text := await self._webhook_queue.get()) is not None:
                await self._post(http, text)

    async def _post(self, http: aiohttp.ClientSession, text: str) -> None:
        for attempt in range(self._webhook_attempts):
            try:
                async with http.post(self._webhook_url, json={"text": text}) as response:
                    await response.read()
                    if response.status < 300:
                        self._metrics.count("keyvend_alert_webhook_total", outcome="sent")
                        return
                    error = f"HTTP {response.status}"
                    if 400 <= response.status < 500 and response.status not in (408, 429):
                        break  # the request itself is refused: another try will not help
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = type(exc).__name__  # not str(exc): it can quote the address
            if attempt + 1 < self._webhook_attempts:
                await asyncio.sleep(self._webhook_backoff * 2**attempt)
        self._metrics.count("keyvend_alert_webhook_total", outcome="failed")
        log.warning(
            "the alert webhook refused an alert (%s); it was still sent to the chats", error
        )
