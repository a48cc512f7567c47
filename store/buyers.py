"""Buyers: who has talked to the shop, in which language, and who may not buy."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import case, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from store.audit import audit
from store.db import Database
from store.errors import InvalidInput, NotFound
from store.models import Buyer


@dataclass(frozen=True, slots=True)
class BuyerView:
    id: int
    username: str | None
    language: str
    blacklisted: bool
    ban_reason: str | None
    first_seen: datetime
    last_seen: datetime


def dialect_insert(session: AsyncSession):  # returns the dialect's insert()
    """`insert` with ON CONFLICT support for whichever database the session talks to."""
    return postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert


async def touch(
    session: AsyncSession,
    buyer_id: int,
    language: str,
    now: datetime,
    *,
    username: str | None = None,
) -> bool:
    """Record that a buyer was seen; return whether they are blacklisted.

    The Telegram language is kept unless the buyer chose one with /language. On PostgreSQL
    the upsert also locks the buyer's row until the transaction ends, which serialises one
    buyer's concurrent checkouts so their limits cannot be raced.
    """
    insert = dialect_insert(session)
    statement = insert(Buyer).values(
        id=buyer_id,
        language=language,
        language_chosen=False,
        username=_username(username),
        blacklisted=False,
        first_seen=now,
        last_seen=now,
    )
    changes = {
        "last_seen": now,
        "language": case(
            (Buyer.language_chosen, Buyer.language), else_=statement.excluded.language
        ),
    }
    if username:
        changes["username"] = statement.excluded.username
    statement = statement.on_conflict_do_update(index_elements=[Buyer.id], set_=changes)
    return bool(await session.scalar(statement.returning(Buyer.blacklisted)))


async def remember(
    db: Database, buyer_id: int, language: str, *, username: str | None = None
) -> bool:
    """Record a buyer's visit, language and username; return whether they are blacklisted."""
    return await db.write(touch, buyer_id, language, datetime.now(UTC), username=username)


def _username(username: str | None) -> str | None:
    """Usernames are matched without the @ and without regard to case, as Telegram does."""
    return username.lstrip("@").lower()[:64] if username else None


async def chosen_language(db: Database, buyer_id: int) -> str | None:
    """The language a buyer chose with /language, or None if they never did."""

    async def work(session: AsyncSession) -> str | None:
        return await session.scalar(
            select(Buyer.language).where(Buyer.id == buyer_id, Buyer.language_chosen.is_(True))
        )

    return await db.read(work)


async def languages(db: Database, buyer_ids: Iterable[int]) -> dict[int, str]:
    """The language of each of these users the shop has seen (chosen, else Telegram's)."""
    ids = list(buyer_ids)

    async def work(session: AsyncSession) -> dict[int, str]:
        rows = await session.execute(select(Buyer.id, Buyer.language).where(Buyer.id.in_(ids)))
        return {buyer: language for buyer, language in rows}

    return await db.read(work) if ids else {}


async def choose_language(db: Database, buyer_id: int, language: str) -> None:
    """Keep `language` for this buyer from now on, whatever their Telegram says."""
    now = datetime.now(UTC)

    async def work(session: AsyncSession) -> None:
        await touch(session, buyer_id, language, now)
        await session.execute(
            update(Buyer)
            .where(Buyer.id == buyer_id)
            .values(language=language, language_chosen=True)
        )

    await db.write(work)


# ---------------------------------------------------------------- bans


async def ban(db: Database, buyer_id: int, reason: str, *, admin_id: int | None) -> BuyerView:
    """Stop a buyer from starting any checkout (orders already paid are not touched)."""
    return await _set_ban(db, buyer_id, True, reason.strip()[:500] or None, admin_id)


async def unban(db: Database, buyer_id: int, *, admin_id: int | None) -> BuyerView:
    """Let a banned buyer buy again; NotFound if the shop never saw them."""
    return await _set_ban(db, buyer_id, False, None, admin_id)


async def _set_ban(
    db: Database, buyer_id: int, banned: bool, reason: str | None, admin_id: int | None
) -> BuyerView:
    now = datetime.now(UTC)

    async def work(session: AsyncSession) -> BuyerView:
        if banned:
            # A buyer can be banned before they ever write (a known scammer's id).
            insert = dialect_insert(session)
            await session.execute(
                insert(Buyer)
                .values(id=buyer_id, language="en", first_seen=now, last_seen=now)
                .on_conflict_do_nothing(index_elements=[Buyer.id])
            )
        changed = await session.execute(
            update(Buyer)
            .where(Buyer.id == buyer_id)
            .values(blacklisted=banned, ban_reason=reason)
            .execution_options(synchronize_session=False)
        )
        if changed.rowcount != 1:
            raise NotFound(f"no buyer {buyer_id}")
        action = "buyer.ban" if banned else "buyer.unban"
        session.add(audit(admin_id, action, f"{buyer_id} {reason or ''}".strip()))
        return view_of(await session.get(Buyer, buyer_id, populate_existing=True))

    return await db.write(work)


async def banned(db: Database, *, limit: int = 50) -> list[BuyerView]:
    """Banned buyers, most recently seen first."""

    async def work(session: AsyncSession) -> list[BuyerView]:
        rows = await session.scalars(
            select(Buyer)
            .where(Buyer.blacklisted.is_(True))
            .order_by(Buyer.last_seen.desc())
            .limit(limit)
        )
        return [view_of(b) for b in rows]

    return await db.read(work)


# ---------------------------------------------------------------- finding buyers


async def find(db: Database, who: str) -> BuyerView:
    """A buyer by Telegram id or @username; NotFound if the shop has not seen them."""

    async def work(session: AsyncSession) -> BuyerView:
        if who.lstrip("-").isdigit():
            buyer = await session.get(Buyer, int(who))
        elif who.startswith("@") and len(who) > 1:
            buyer = await session.scalar(
                select(Buyer).where(Buyer.username == _username(who)).limit(1)
            )
        else:
            raise InvalidInput("give a Telegram user id or an @username")
        if buyer is None:
            raise NotFound(f"no buyer {who}")
        return view_of(buyer)

    return await db.read(work)


async def resolve(db: Database, who: str) -> int:
    """The Telegram id meant by `who` (a number, or the @username of a buyer seen before)."""
    if who.lstrip("-").isdigit():
        return int(who)
    return (await find(db, who)).id


def view_of(buyer: Buyer) -> BuyerView:
    return BuyerView(
        id=buyer.id,
        username=buyer.username,
        language=buyer.language,
        blacklisted=buyer.blacklisted,
        ban_reason=buyer.ban_reason,
        first_seen=buyer.first_seen,
        last_seen=buyer.last_seen,
    )
