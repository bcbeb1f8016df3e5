"""The ledger: one row per server session, with what it was given, what it used and the
rate in force when it started.

It has its own database (SQLite beside the hub's by default, or PostgreSQL): JupyterHub's
migrations own the hub database's schema, and a ledger must outlive a reset of the hub
database. A session's cost is computed from its row (start, last time seen running or
stop, rate), so metering it again after a hub restart never counts a moment twice.
Blocking: the hub calls it in a thread.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    Row,
    Select,
    String,
    bindparam,
    case,
    create_engine,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    lazyload,
    mapped_column,
    relationship,
    sessionmaker,
)
from sqlalchemy.types import TypeDecorator

from hubstack.config import Config
from hubstack.usage.budgets import Scope
from hubstack.usage.pricing import Charge, Rate, charge


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every database (SQLite keeps no time zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        return None if value is None else value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class SessionRow(Base):
    """One server session: who, which server, where, what it was given, used and cost."""

    __tablename__ = "hubstack_usage_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user: Mapped[str] = mapped_column(String(255), index=True)
    server: Mapped[str] = mapped_column(String(255))
    backend: Mapped[str] = mapped_column(String(16))
    machine: Mapped[str] = mapped_column(String(64), index=True)
    fields: Mapped[dict[str, str]] = mapped_column(JSON)
    cores: Mapped[float] = mapped_column(Float)
    memory: Mapped[int] = mapped_column(BigInteger)
    gpus: Mapped[int] = mapped_column(Integer)
    rate: Mapped[float] = mapped_column(Float)  # money per hour, fixed at start
    currency: Mapped[str] = mapped_column(String(8))
    started: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # The last moment the server was seen running: where a session the hub lost sight
    # of (it was down when the server ended) is charged up to.
    metered: Mapped[datetime] = mapped_column(UTCDateTime)
    stopped: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    cpu_seconds: Mapped[float | None] = mapped_column(Float)
    peak_memory: Mapped[int | None] = mapped_column(BigInteger)
    job_id: Mapped[str | None] = mapped_column(String(32))
    # When a budget this session counts against was found spent (grace runs from here).
    over_budget_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    groups: Mapped[list[GroupRow]] = relationship(cascade="all, delete-orphan")

    @property
    def end(self) -> datetime:
        """Up to when the session is charged: its stop, or the last time seen running."""
        return self.stopped or self.metered

    @property
    def charge_total(self) -> Charge:
        return charge(self.rate, self.cores, self.started, self.end, self.started, self.end)


class GroupRow(Base):
    """A group the session's user was in when it started: whose group budgets it counts
    against (a later change of membership does not move past spending)."""

    __tablename__ = "hubstack_usage_session_groups"

    session_id: Mapped[int] = mapped_column(
        ForeignKey("hubstack_usage_sessions.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(255), primary_key=True, index=True)


@dataclass(frozen=True)
class Reading:
    """A session seen running at ``at``, having used what is given (None: not measured)."""

    session_id: int
    at: datetime
    cpu_seconds: float | None = None
    peak_memory: int | None = None


@dataclass(frozen=True)
class Opened:
    """What is known of a session as it starts."""

    user: str
    server: str
    backend: str
    machine: str
    fields: dict[str, str]
    rate: Rate
    currency: str
    groups: frozenset[str]
    job_id: str | None = None


def _within(
    query: Select[Any],
    since: datetime,
    until: datetime,
    users: Iterable[str] | None,
    groups: Iterable[str] | None,
) -> Select[Any]:
    """``query`` narrowed to sessions within ``[since, until]`` of ``users`` or of members
    of ``groups`` (neither: everyone's)."""
    query = query.where(
        SessionRow.started < until,
        or_(SessionRow.stopped.is_(None), SessionRow.stopped > since),
    )
    who = []
    if users is not None:
        who.append(SessionRow.user.in_(list(users)))
    if groups is not None:
        member = select(GroupRow.session_id).where(GroupRow.name.in_(list(groups)))
        who.append(SessionRow.id.in_(member))
    return query.where(or_(*who)) if who else query


def ledger_url(config: Config) -> str:
    """The ledger's database: ``usage.database``, else SQLite beside the hub's."""
    return config.usage.database_url or f"sqlite:///{config.hub.data_dir / 'usage.sqlite'}"


def _costed() -> tuple[Any, ...]:
    """The columns a cost needs, with ``end``: the stop, or the last metering of a session
    still running."""
    return (
        SessionRow.id,
        SessionRow.user,
        SessionRow.machine,
        SessionRow.rate,
        SessionRow.cores,
        SessionRow.started,
        func.coalesce(SessionRow.stopped, SessionRow.metered).label("end"),
    )


class Ledger:
    """The sessions in one database."""

    def __init__(self, url: str) -> None:
        from hubstack.usage import audit, overrides  # noqa: F401  (their tables, created here)

        self.engine = create_engine(url, pool_pre_ping=True)
        Base.metadata.create_all(self.engine)
        audit.protect(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def begin(self) -> AbstractContextManager[Session]:
        """A transaction on the ledger's database, for its other tables (the audit log)."""
        return self._sessions.begin()

    def open(self, opened: Opened, now: datetime) -> int:
        """Record a session that started at ``now``; its id."""
        row = SessionRow(
            user=opened.user,
            server=opened.server,
            backend=opened.backend,
            machine=opened.machine,
            fields=opened.fields,
            cores=opened.rate.cores,
            memory=opened.rate.memory,
            gpus=opened.rate.gpus,
            rate=opened.rate.money,
            currency=opened.currency,
            started=now,
            metered=now,
            job_id=opened.job_id,
            groups=[GroupRow(name=name) for name in sorted(opened.groups)],
        )
        with self._sessions.begin() as db:
            db.add(row)
            db.flush()
            return row.id

    def get(self, session_id: int) -> SessionRow | None:
        with self._sessions() as db:
            return db.get(SessionRow, session_id)

    def meter(
        self,
        session_id: int,
        now: datetime,
        cpu_seconds: float | None = None,
        peak_memory: int | None = None,
    ) -> SessionRow | None:
        """The session was seen running at ``now``, having used what is given."""
        with self._sessions.begin() as db:
            row = db.get(SessionRow, session_id)
            if row is None or row.stopped is not None:
                return row
            row.metered = max(row.metered, now)
            if cpu_seconds is not None:
                row.cpu_seconds = max(row.cpu_seconds or 0.0, cpu_seconds)
            if peak_memory is not None:
                row.peak_memory = max(row.peak_memory or 0, peak_memory)
            return row

    def close(self, session_id: int, end: datetime) -> SessionRow | None:
        """The session ended at ``end``; a second close changes nothing."""
        with self._sessions.begin() as db:
            row = db.get(SessionRow, session_id)
            if row is not None and row.stopped is None:
                row.stopped = max(row.started, end)
                row.metered = row.stopped
            return row

    def record(self, readings: Iterable[Reading]) -> None:
        """Many sessions seen running, in one transaction and one statement (what a meter
        pass writes); each reading only ever moves a session's figures forward."""
        table = SessionRow.__table__

        def forward(column: Any, value: Any) -> Any:
            return case((or_(column.is_(None), column < value), value), else_=column)

        statement = (
            update(table)
            .where(table.c.id == bindparam("session_id"), table.c.stopped.is_(None))
            .values(
                metered=forward(table.c.metered, bindparam("at", type_=UTCDateTime)),
                cpu_seconds=forward(table.c.cpu_seconds, bindparam("cpu", type_=Float)),
                peak_memory=forward(table.c.peak_memory, bindparam("peak", type_=BigInteger)),
            )
        )
        rows = [
            {"session_id": r.session_id, "at": r.at, "cpu": r.cpu_seconds, "peak": r.peak_memory}
            for r in readings
        ]
        if rows:
            with self.engine.begin() as db:
                db.execute(statement, rows)

    def period_rows(self, since: datetime, until: datetime, running: bool) -> list[Row[Any]]:
        """The running (or the stopped) sessions within ``[since, until]``, one row per
        session and group it counts against (``group`` None: in none), with what costs
        need: one query for a whole meter pass."""
        columns = select(
            *_costed(), SessionRow.over_budget_since, GroupRow.name.label("group")
        ).outerjoin(GroupRow)
        # Each condition on its own so the database can use the index on ``stopped``
        # (``_within``'s "not stopped or stopped since" cannot).
        state = SessionRow.stopped.is_(None) if running else SessionRow.stopped > since
        with self._sessions() as db:
            return list(db.execute(columns.where(state, SessionRow.started < until)))

    def starts(self, since: datetime) -> list[tuple[datetime, dict[str, str]]]:
        """When each session since ``since`` started, with its form's fields (which hold
        its partition): what the elastic cluster learns its warm hours from."""
        query = select(SessionRow.started, SessionRow.fields).where(SessionRow.started >= since)
        with self._sessions() as db:
            return [(row.started, row.fields) for row in db.execute(query)]

    def groups_of(self, session_id: int) -> list[str]:
        """The groups a session counts against."""
        query = select(GroupRow.name).where(GroupRow.session_id == session_id)
        with self._sessions() as db:
            return list(db.scalars(query))

    def mark_over_budget(self, session_id: int, since: datetime | None) -> None:
        with self._sessions.begin() as db:
            row = db.get(SessionRow, session_id)
            if row is not None:
                row.over_budget_since = since

    def sessions(
        self,
        since: datetime,
        until: datetime,
        users: Iterable[str] | None = None,
        groups: Iterable[str] | None = None,
    ) -> list[SessionRow]:
        """Sessions that ran within ``[since, until]``: of ``users``, or of members of
        ``groups`` (either given narrows to them; neither: everyone's)."""
        query = _within(select(SessionRow), since, until, users, groups)
        # Without their groups: a report needs none, and spent() asks for the few it needs.
        query = query.options(lazyload(SessionRow.groups))
        with self._sessions() as db:
            return list(db.scalars(query.order_by(SessionRow.started, SessionRow.id)))

    def charged(
        self,
        since: datetime,
        until: datetime,
        users: Iterable[str] | None = None,
        groups: Iterable[str] | None = None,
    ) -> list[Row[Any]]:
        """What :meth:`sessions` gives, as plain rows of what costs and reports need (with
        ``end``): many times faster than whole objects over a year of sessions."""
        columns = select(*_costed(), SessionRow.cpu_seconds)
        with self._sessions() as db:
            return list(db.execute(_within(columns, since, until, users, groups)))

    def session_groups(
        self,
        since: datetime,
        until: datetime,
        users: Iterable[str] | None = None,
        groups: Iterable[str] | None = None,
    ) -> dict[int, set[str]]:
        """The groups each session of :meth:`charged` counted against, by session id (one
        query whatever the number of sessions: no list of ids to bind)."""
        ids = _within(select(SessionRow.id), since, until, users, groups)
        query = select(GroupRow.session_id, GroupRow.name).where(GroupRow.session_id.in_(ids))
        found: dict[int, set[str]] = {}
        with self._sessions() as db:
            for session_id, name in db.execute(query):
                found.setdefault(session_id, set()).add(name)
        return found

    def spent(
        self, scopes: Iterable[Scope], since: datetime, until: datetime
    ) -> dict[Scope, Charge]:
        """What each user's or group's sessions cost within ``[since, until]``."""
        scopes = list(scopes)
        users = [s.name for s in scopes if s.kind == "user"]
        groups = [s.name for s in scopes if s.kind == "group"]
        totals = {scope: Charge() for scope in scopes}
        rows = self.charged(since, until, users, groups)
        member: dict[int, set[str]] = {}
        if groups and rows:
            query = select(GroupRow.session_id, GroupRow.name).where(
                GroupRow.name.in_(groups), GroupRow.session_id.in_([row.id for row in rows])
            )
            with self._sessions() as db:
                for session_id, name in db.execute(query):
                    member.setdefault(session_id, set()).add(name)
        for row in rows:
            cost = charge(row.rate, row.cores, row.started, row.end, since, until)
            for scope in scopes:
                if (scope.kind == "user" and scope.name == row.user) or (
                    scope.kind == "group" and scope.name in member.get(row.id, ())
                ):
                    totals[scope] += cost
        return totals
