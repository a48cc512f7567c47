"""Counting paid broadcast: which messages Telegram charges for, and that counts are kept."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.broadcasts import FREE_RATE, PaidBroadcasts
from store import broadcasts
from store.db import Database


async def test_paid_messages_past_the_free_rate_in_a_second_are_the_charged_ones(
    database_url: str,
) -> None:
    db = Database(database_url)
    try:
        tally = PaidBroadcasts(db)
        for i in range(FREE_RATE - 5):
            tally.sent(paid=False, at=100.0 + i / 1000)  # free sends use the free rate too
        for i in range(10):
            tally.sent(paid=True, at=100.5 + i / 1000)  # five free, five past the free rate
        tally.sent(paid=True, at=102.0)  # a second later: free again
        await tally.flush()
        await tally.flush()  # nothing new: nothing added

        today = datetime.now(UTC).date()
        assert await broadcasts.usage(db, since=today) == broadcasts.BroadcastUsage(11, 5)
        tally.sent(paid=True, at=103.0)
        await tally.flush()
        assert await broadcasts.usage(db, since=today) == broadcasts.BroadcastUsage(12, 5)
    finally:
        await db.dispose()
