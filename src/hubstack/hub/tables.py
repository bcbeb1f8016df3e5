"""hubstack's own tables in the hub's database (invitations, storage connections), beside
JupyterHub's: one declarative base, created when the hub starts."""

from __future__ import annotations

from datetime import UTC, datetime

from jupyterhub import orm
from sqlalchemy import Engine, inspect, text
from sqlalchemy.orm import DeclarativeBase


class HubTable(DeclarativeBase):
    """The base of every hubstack table kept in the hub's database."""


def utcnow() -> datetime:
    """UTC without a zone, as JupyterHub's own tables store times."""
    return datetime.now(UTC).replace(tzinfo=None)


def create_tables(db_url: str) -> None:
    """Create those of hubstack's tables that are missing, and add the columns a newer
    hubstack gave an existing one (each nullable: rows from before hold none)."""
    # The modules that define them, so that their classes are on the metadata; imported
    # here because they import this module.
    from hubstack.hub import invitations, storage, storage_jobs  # noqa: F401

    db = orm.new_session_factory(db_url)()
    try:
        HubTable.metadata.create_all(db.get_bind(), checkfirst=True)
        add_columns(db.get_bind())  # type: ignore[arg-type]
    finally:
        db.close()


def add_columns(engine: Engine) -> None:
    """``ALTER TABLE ... ADD COLUMN`` for each nullable column a table lacks: the one kind of
    change hubstack makes to its tables, which needs no migration tool (JupyterHub's own
    tables are alembic's)."""
    found = inspect(engine)
    with engine.begin() as conn:
        for table in HubTable.metadata.sorted_tables:
            there = {column["name"] for column in found.get_columns(table.name)}
            for column in table.columns:
                if column.name in there:
                    continue
                if not column.nullable:
                    raise RuntimeError(f"{table.name}.{column.name} is new and not nullable")
                kind = column.type.compile(dialect=conn.dialect)
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
