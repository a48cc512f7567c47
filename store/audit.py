"""The audit trail: who did what to the shop, and when."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from store.db import Database
from store.models import AuditEntry


@dataclass(frozen=True, slots=True)
class AuditView:
    admin_id: int | None
    action: str
    detail: str
    at: datetime


def audit(admin_id: int | None, action: str, detail: str = "") -> AuditEntry:
    """An audit entry to add to the session of the transaction that did the action."""
    return AuditEntry(admin_id=admin_id, action=action, detail=detail, created_at=datetime.now(UTC))


async def recent(db: Database, *, limit: int = 20) -> list[AuditView]:
    """The latest admin actions, newest first."""

    async def work(session: AsyncSession) -> list[AuditView]:
        rows = await session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit))
        return [AuditView(e.admin_id, e.action, e.detail, e.created_at) for e in rows]

    return await db.read(work)
