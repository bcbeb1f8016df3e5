"""hubstack's own tables in the hub's database (invitations, storage connections), beside
JupyterHub's: one declarative base, created when the hub starts."""

from __future__ import annotations

from datetime import UTC, datetime

from jupyterhub import orm
from sqlalchemy.orm import DeclarativeBase


class HubTable(DeclarativeBase):
    """The base of every hubstack table kept in the hub's database."""


def utcnow() -> datetime:
    """UTC without a zone, as JupyterHub's own tables store times."""
    return datetime.now(UTC).replace(tzinfo=None)


def create_tables(db_url: str) -> None:
    """Create those of hubstack's tables that are missing (an existing one is never altered)."""
    # The modules that define them, so that their classes are on the metadata; imported
    # here because they import this module.
    from hubstack.hub import invitations, storage, storage_jobs  # noqa: F401

    db = orm.new_session_factory(db_url)()
    try:
        HubTable.metadata.create_all(db.get_bind(), checkfirst=True)
    finally:
        db.close()
