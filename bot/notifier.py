"""Admin alerts: one notifier for everything that needs a human, storms folded into summaries.

`alert()` never blocks and never fails the caller: alerts are queued and a background task
sends them to every admin. Within a window, the first few alerts go out as they are and the
rest become one summary counted by kind, so a storm of failures is one message, not a flood
that would itself hit Telegram's limits. Alerts are about orders, never contain key text,
and are a convenience on top of state the database already holds (`keyvend check`,
`/stats`), so losing queued alerts in a crash loses no information.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

from bot.metrics import Metrics
from bot.waiting import wait_any

log = logging.getLogger(__name__)

Send = Callable[[int, str], Awaitable[object]]


class AdminNotifier:
    def __init__(
        self,
        send: Send,
        admin_ids: Iterable[int],
        metrics: Metrics,
        *,
        window: float = 60.0,
        burst: int = 5,
    ) -> None:
        self._send = send
        self._admins = tuple(admin_ids)
        self._metrics = metrics
        self._window = window
        self._burst = burst
        self._queue: list[tuple[str, str]] = []
        self._wake = asyncio.Event()
        self._window_start = 0.0
        self._sent_in_window = 0
        self._summarised = False

    def alert(self, kind: str, text: str) -> None:
        log.info("admin alert (%s): %s", kind, text.splitlines()[0])
        self._metrics.count("keyvend_alerts_total", kind=kind)
        self._queue.append((kind, text))
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Send queued alerts until `stop` is set (then send what is left once)."""
        while not stop.is_set():
            await wait_any(self._wake, stop, timeout=self._window)
            self._wake.clear()
            await self.flush()
        await self.flush()

    async def flush(self) -> None:
        for text in self._take(time.monotonic()):
            for admin in self._admins:
                try:
                    await self._send(admin, text)
                except Exception:  # an alert that cannot be sent must not stop the rest
                    log.warning("could not send an alert to admin %s", admin, exc_info=True)

    def _take(self, now: float) -> list[str]:
        """The messages to send now: up to `burst` alerts and one summary per window."""
        if now - self._window_start >= self._window:
            self._window_start, self._sent_in_window, self._summarised = now, 0, False
        room = max(0, self._burst - self._sent_in_window)
        batch, self._queue = self._queue, []
        messages = [text for _, text in batch[:room]]
        self._sent_in_window += len(messages)
        rest = batch[room:]
        if rest and not self._summarised:
            kinds = Counter(kind for kind, _ in rest)
            summary = ", ".join(f"{n}× {kind}" for kind, n in kinds.most_common())
            messages.append(f"⚠️ {len(rest)} more alerts: {summary}. See /stats.")
            self._summarised = True
        elif rest:
            self._queue = rest  # this window's summary went out already: they wait for the next
        return messages
