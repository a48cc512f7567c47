"""The audit trail: who did what to the shop, and when."""

from __future__ import annotations

from datetime import UTC, datetime

from store.models import AuditEntry


def audit(admin_id: int | None, action: str, detail: str = "") -> AuditEntry:
    """An audit entry to add to the session of the transaction that did the action."""
    return AuditEntry(admin_id=admin_id, action=action, detail=detail, created_at=datetime.now(UTC))
