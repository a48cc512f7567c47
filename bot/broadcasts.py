"""Counting Telegram's paid broadcast: what the seller pays in Stars for a fast flash sale.

Where the seller allows it (PAID_BROADCAST), key deliveries and the product cards that
answer a sale's buyers go out with `allow_paid_broadcast`: Telegram then accepts up to
1,000 messages a second from the bot and charges Stars for each one past the free rate.
The send pace reports every message it sent; this counts the paid ones, and those that went
out while the free rate was used up in the last second (the ones charged), and adds them
to the database about once a second, so /stats shows the cost across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from datetime import UTC, datetime

from store import broadcasts
from store.db import Database

log = logging.getLogger(__name__)

FREE_RATE = 30  # messages a second Telegram carries without charge
PAID_RATE = 1000.0  # messages a second Telegram carries with allow_paid_broadcast
_FLUSH_EVERY = 1.0


class PaidBroadcasts:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._recent: deque[float] = deque()  # when each message of the last second went out
        self._messages = 0
        self._beyond_free = 0

    def sent(self, *, paid: bool, at: float | None = None) -> None:
        """One message went out (`paid`: with allow_paid_broadcast) at `at` (time.monotonic())."""
        now = time.monotonic() if at is None else at
        while self._recent and self._recent[0] <= now - 1.0:
            self._recent.popleft()
        free_used_up = len(self._recent) >= FREE_RATE
        self._recent.append(now)
        if paid:
            self._messages += 1
            self._beyond_free += free_used_up

    async def run(self, stop: asyncio.Event) -> None:
        """Write the counts about once a second until `stop`, then the last ones."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _FLUSH_EVERY)
            await self.flush()

    async def flush(self) -> None:
        messages, beyond_free = self._messages, self._beyond_free
        if not messages:
            return
        self._messages -= messages
        self._beyond_free -= beyond_free
        try:
            await broadcasts.record(
                self._db, datetime.now(UTC).date(), messages=messages, beyond_free=beyond_free
            )
        except Exception:  # noqa: BLE001 - counted again with the next batch
            log.warning("could not record %d paid-broadcast messages yet", messages)
            self._messages += messages
            self._beyond_free += beyond_free
