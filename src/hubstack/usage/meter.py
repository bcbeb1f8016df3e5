"""The meter: what every budget has spent this period, for all running servers at once.

Each running server is polled on its own, but spending is counted once per pass for all
of them: a poll only leaves its reading here and judges its budgets against the last
pass's figures; the first poll after ``max_age`` runs the pass, which writes every reading
in one statement and sums the running sessions in one query. Stopped sessions cannot
spend more, so their sum is taken once per period (at the first pass: one query) and
each session this meter stops is added to it as it stops. Only the hub opens and closes
sessions, so nothing else changes these figures under it. Blocking: the hub calls it in
a thread.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row

from hubstack.config.usage import UsageSettings
from hubstack.usage.budgets import Scope, period_of
from hubstack.usage.ledger import Ledger, Reading, SessionRow
from hubstack.usage.pricing import Charge, charge

Spending = dict[Scope, Charge]


def _sum(rows: Iterable[Row[Any]], since: datetime, until: datetime) -> Spending:
    """Each user's and group's spending from :meth:`Ledger.period_rows` (a session's
    user is counted once however many groups it has)."""
    totals: Spending = {}
    users_done: set[int] = set()
    for row in rows:
        cost = charge(row.rate, row.cores, row.started, row.end, since, until)
        if row.id not in users_done:
            users_done.add(row.id)
            scope = Scope("user", row.user)
            totals[scope] = totals.get(scope, Charge()) + cost
        if row.group is not None:
            scope = Scope("group", row.group)
            totals[scope] = totals.get(scope, Charge()) + cost
    return totals


def _add(into: Spending, more: Spending) -> Spending:
    out = dict(into)
    for scope, cost in more.items():
        out[scope] = out.get(scope, Charge()) + cost
    return out


class Meter:
    """One per ledger in the hub."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._lock = threading.Lock()
        self._pending: dict[int, Reading] = {}
        self._period: tuple[datetime, datetime] | None = None
        self._stopped: Spending = {}  # sessions stopped this period
        self._spent: Spending = {}
        self._over: dict[int, datetime | None] = {}  # running sessions' over_budget_since
        self._machines: Counter[str] = Counter()
        self._passed: datetime | None = None

    def read(self, reading: Reading) -> None:
        """A server was seen running (written at the next pass)."""
        with self._lock:
            self._pending[reading.session_id] = reading

    def spent(self, settings: UsageSettings, now: datetime, max_age: timedelta) -> Spending:
        """Each user's and group's spending this period, as of a pass at most ``max_age``
        old (running one now if there is none)."""
        with self._lock:
            fresh = self._passed is not None and now - self._passed < max_age
            if not fresh or self._period is None or now >= self._period[1]:
                self._pass(settings, now)
            return self._spent

    def over_budget_since(self, session_id: int) -> datetime | None:
        return self._over.get(session_id)

    def mark_over_budget(self, session_id: int, since: datetime | None) -> None:
        with self._lock:
            self.ledger.mark_over_budget(session_id, since)
            self._over[session_id] = since

    def running_by_machine(self) -> dict[str, int]:
        """Running sessions per machine type at the last pass."""
        return dict(self._machines)

    def _pass(self, settings: UsageSettings, now: datetime) -> None:
        self.ledger.record(self._pending.values())
        self._pending.clear()
        period = period_of(settings, now)
        if period != self._period:
            self._stopped = _sum(self.ledger.period_rows(*period, running=False), *period)
            self._period = period
        running = self.ledger.period_rows(*period, running=True)
        self._spent = _add(self._stopped, _sum(running, *period))
        by_id = {row.id: row for row in running}
        self._over = {id_: row.over_budget_since for id_, row in by_id.items()}
        self._machines = Counter(row.machine for row in by_id.values())
        self._passed = now

    def close(self, session_id: int, end: Callable[[SessionRow], datetime]) -> None:
        """Stop a session at ``end(row)`` (its row with its last reading), counting what
        it cost this period among the stopped ones; a second close changes nothing."""
        with self._lock:
            reading = self._pending.pop(session_id, None)
            if reading is not None:
                self.ledger.record([reading])
            row = self.ledger.get(session_id)
            if row is None or row.stopped is not None:
                return
            closed = self.ledger.close(session_id, end(row))
            self._over.pop(session_id, None)
            if closed is None or self._period is None:
                return
            cost = charge(closed.rate, closed.cores, closed.started, closed.end, *self._period)
            scopes = [Scope("user", closed.user)]
            scopes += [Scope("group", name) for name in self.ledger.groups_of(session_id)]
            self._stopped = _add(self._stopped, {scope: cost for scope in scopes})
            if self._machines[closed.machine] > 0:
                self._machines[closed.machine] -= 1
