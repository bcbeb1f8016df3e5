"""Spending per day (by machine type) and per group, beside the per-user report: what the
usage page charts and tables. Pure: rows as ``Ledger.charged`` gives them, each session's
groups as ``Ledger.session_groups`` gives them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Row

from hubstack.usage.pricing import charge

DAY = timedelta(days=1)


@dataclass
class Day:
    """What one UTC day of the window cost, per machine type."""

    day: date
    by_machine: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.by_machine.values())


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def per_day(rows: Iterable[Row[Any]], since: datetime, until: datetime) -> list[Day]:
    """Every UTC day of ``[since, until]`` (spendless ones too: a chart's gaps are days)
    with what each session cost on it."""
    days: dict[date, Day] = {}
    day = since.date()
    while midnight(day) < until:
        days[day] = Day(day)
        day += DAY
    for row in rows:
        start, end = max(row.started, since), min(row.end, until)
        day = start.date()
        while midnight(day) < end:
            cost = charge(
                row.rate,
                row.cores,
                row.started,
                row.end,
                max(midnight(day), since),
                min(midnight(day) + DAY, until),
            )
            spent = days[day].by_machine
            spent[row.machine] = spent.get(row.machine, 0.0) + cost.money
            day += DAY
    return list(days.values())


@dataclass
class GroupLine:
    """What the sessions counted against one group cost within the window."""

    group: str
    sessions: int = 0
    core_hours: float = 0.0
    cost: float = 0.0


def per_group(
    rows: Iterable[Row[Any]],
    groups: Mapping[int, set[str]],
    since: datetime,
    until: datetime,
) -> list[GroupLine]:
    """Per group, the sessions its members started while in it (as budgets count them: a
    session of a member of two groups counts for both)."""
    lines: dict[str, GroupLine] = {}
    for row in rows:
        cost = charge(row.rate, row.cores, row.started, row.end, since, until)
        for name in groups.get(row.id, ()):
            line = lines.setdefault(name, GroupLine(name))
            line.sessions += 1
            line.core_hours += cost.core_hours
            line.cost += cost.money
    return sorted(lines.values(), key=lambda line: (-line.cost, line.group))
