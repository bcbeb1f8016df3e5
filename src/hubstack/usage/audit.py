"""The audit log: who started, stopped or deleted which server, when and from where, and
what the budgets did to it. Append-only: rows are only ever added (this module has no way
to change one, and a session that tries is refused), kept in the ledger's database."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, String, event, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from hubstack.usage.ledger import Base, Ledger, UTCDateTime


class AuditRow(Base):
    __tablename__ = "hubstack_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(255), index=True)  # who did it, or "hub"
    action: Mapped[str] = mapped_column(String(32))
    user: Mapped[str] = mapped_column(String(255), index=True)  # whose server
    server: Mapped[str] = mapped_column(String(255))
    source: Mapped[str | None] = mapped_column(String(64))  # the client's address
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "user": self.user,
            "server": self.server,
            "source": self.source,
            "detail": self.detail,
        }


@event.listens_for(Session, "before_flush")
def _append_only(session: Session, _context: object, _instances: object) -> None:
    """No session changes or removes an audit row once written."""
    for row in (*session.dirty, *session.deleted):
        if isinstance(row, AuditRow):
            raise PermissionError("the audit log is append-only")


def record(
    ledger: Ledger,
    at: datetime,
    actor: str,
    action: str,
    user: str,
    server: str,
    source: str | None = None,
    **detail: Any,
) -> None:
    """Add one entry; blocking (the hub calls it in a thread)."""
    with ledger.begin() as db:
        db.add(
            AuditRow(
                at=at,
                actor=actor,
                action=action,
                user=user,
                server=server,
                source=source,
                detail=detail,
            )
        )


def entries(
    ledger: Ledger, since: datetime, until: datetime, user: str | None = None
) -> list[AuditRow]:
    """Entries within ``[since, until]``, oldest first, of ``user`` (as actor or owner)."""
    query = select(AuditRow).where(AuditRow.at >= since, AuditRow.at <= until)
    if user is not None:
        query = query.where((AuditRow.user == user) | (AuditRow.actor == user))
    with ledger.begin() as db:
        return list(db.scalars(query.order_by(AuditRow.at, AuditRow.id)))


def as_json_lines(rows: list[AuditRow]) -> str:
    return "".join(json.dumps(row.as_dict()) + "\n" for row in rows)
