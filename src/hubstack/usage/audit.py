"""The audit log: who started, stopped or deleted which server, who logged in or failed
to, what admins changed (users, groups, budgets), when and from where. Append-only, kept in
the ledger's database: rows are only ever added; an ORM session that tries to change one
is refused, and so is any UPDATE, DELETE (or, on PostgreSQL, TRUNCATE) sent to the
database by anyone, by triggers the ledger installs (:func:`protect`)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Engine, Integer, String, event, select, text
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
            raise PermissionError(APPEND_ONLY)


APPEND_ONLY = "the audit log is append-only"

# The database refuses changes to written rows, whoever sends them (a script, a console,
# a bug): the ORM check above only covers hubstack's own sessions. A database owner can
# still drop a trigger; sites that need more give the hub's role INSERT and SELECT only.
_SQLITE = [
    f"""CREATE TRIGGER IF NOT EXISTS hubstack_audit_no_{verb.lower()}
    BEFORE {verb} ON hubstack_audit BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END"""
    for verb in ("UPDATE", "DELETE")
]
_POSTGRESQL = [
    f"""CREATE OR REPLACE FUNCTION hubstack_audit_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '{APPEND_ONLY}'; END $$""",
    """CREATE TRIGGER hubstack_audit_no_change BEFORE UPDATE OR DELETE ON hubstack_audit
    FOR EACH ROW EXECUTE FUNCTION hubstack_audit_append_only()""",
    """CREATE TRIGGER hubstack_audit_no_truncate BEFORE TRUNCATE ON hubstack_audit
    FOR EACH STATEMENT EXECUTE FUNCTION hubstack_audit_append_only()""",
]


def protect(engine: Engine) -> None:
    """Install the triggers that make the audit table append-only, once per database
    (also on one made before they existed)."""
    with engine.begin() as db:
        if engine.dialect.name == "sqlite":
            for statement in _SQLITE:
                db.execute(text(statement))
            return
        installed = db.scalar(
            text("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'hubstack_audit'::regclass")
        )
        if installed == 0:
            for statement in _POSTGRESQL:
                db.execute(text(statement))


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
