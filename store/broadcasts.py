"""What Telegram's paid broadcast cost: messages sent with it, per UTC day.

Telegram lets a bot send up to 1,000 messages a second with `allow_paid_broadcast`, and
charges Stars for each message past the free rate. The bot counts as it sends and adds the
counts here in batches, so the figure in /stats survives a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from store.buyers import dialect_insert
from store.db import Database
from store.models import PaidBroadcastDay


@dataclass(frozen=True, slots=True)
class BroadcastUsage:
    messages: int  # sent with allow_paid_broadcast
    beyond_free: int  # of those, sent past the free rate: what Telegram charges for


async def record(db: Database, day: date, *, messages: int, beyond_free: int) -> None:
    """Add a batch of sends to the day's count."""

    async def work(session: AsyncSession) -> None:
        statement = dialect_insert(session)(PaidBroadcastDay).values(
            day=day, messages=messages, beyond_free=beyond_free
        )
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=[PaidBroadcastDay.day],
                set_={
                    "messages": PaidBroadcastDay.messages + messages,
                    "beyond_free": PaidBroadcastDay.beyond_free + beyond_free,
                },
            )
        )

    await db.write(work)


async def usage(db: Database, *, since: date) -> BroadcastUsage:
    """Paid-broadcast sends from `since` (a UTC day) on."""

    async def work(session: AsyncSession) -> BroadcastUsage:
        row = (
            await session.execute(
                select(
                    func.coalesce(func.sum(PaidBroadcastDay.messages), 0),
                    func.coalesce(func.sum(PaidBroadcastDay.beyond_free), 0),
                ).where(PaidBroadcastDay.day >= since)
            )
        ).one()
        return BroadcastUsage(int(row[0]), int(row[1]))

    return await db.read(work)
