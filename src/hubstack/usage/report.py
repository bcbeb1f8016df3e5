"""Usage reports from ledger sessions: spending, time and efficiency per user and machine
type within a window, as rows for a table, CSV or JSON. Pure: the caller reads the rows."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row

from hubstack.config.usage import UsageSettings
from hubstack.usage.budgets import period_of
from hubstack.usage.ledger import Ledger, SessionRow
from hubstack.usage.pricing import charge, overlap_hours

COLUMNS = ("user", "machine", "sessions", "hours", "core_hours", "cost", "cpu_hours")


@dataclass
class Line:
    """One user's use of one machine type within the window."""

    user: str
    machine: str
    sessions: int = 0
    hours: float = 0.0
    core_hours: float = 0.0
    cost: float = 0.0
    cpu_hours: float | None = None  # measured use, where the backend measured it
    efficiency: float | None = None  # cpu_hours / core_hours of the measured sessions
    _measured_core_hours: float = 0.0


def report(rows: Iterable[SessionRow | Row[Any]], since: datetime, until: datetime) -> list[Line]:
    """Per (user, machine type), what sessions cost and used within ``[since, until]``.

    A session's measured CPU time is counted in proportion to its share in the window.
    """
    lines: dict[tuple[str, str], Line] = {}
    for row in rows:
        line = lines.setdefault((row.user, row.machine), Line(row.user, row.machine))
        cost = charge(row.rate, row.cores, row.started, row.end, since, until)
        hours = overlap_hours(row.started, row.end, since, until)
        line.sessions += 1
        line.hours += hours
        line.core_hours += cost.core_hours
        line.cost += cost.money
        whole = (row.end - row.started).total_seconds() / 3600
        if row.cpu_seconds is not None and whole > 0:
            used = row.cpu_seconds / 3600 * hours / whole
            line.cpu_hours = (line.cpu_hours or 0.0) + used
            line._measured_core_hours += cost.core_hours
    for line in lines.values():
        if line.cpu_hours is not None and line._measured_core_hours > 0:
            line.efficiency = line.cpu_hours / line._measured_core_hours
    return sorted(lines.values(), key=lambda line: (-line.cost, line.user, line.machine))


@dataclass(frozen=True)
class Window:
    """What a report covers: ``since`` to ``until``, by default the current budget period
    up to now."""

    since: datetime
    until: datetime

    @classmethod
    def of(cls, settings: UsageSettings, now: datetime, last: timedelta | None) -> Window:
        if last is not None:
            return cls(now - last, now)
        since, until = period_of(settings, now)
        return cls(since, min(until, now))


def usage_report(
    ledger: Ledger,
    settings: UsageSettings,
    window: Window,
    users: list[str] | None = None,
    groups: list[str] | None = None,
) -> list[Line]:
    """The report of ``users``' or ``groups``' members' sessions (neither: everyone's);
    blocking (the hub calls it in a thread)."""
    rows = ledger.charged(window.since, window.until, users, groups)
    return report(rows, window.since, window.until)


def as_json(lines: list[Line], settings: UsageSettings, window: Window) -> dict[str, object]:
    return {
        "since": window.since.isoformat(),
        "until": window.until.isoformat(),
        "currency": settings.currency,
        "lines": as_dicts(lines),
    }


def as_dicts(lines: list[Line]) -> list[dict[str, object]]:
    return [{k: v for k, v in asdict(line).items() if not k.startswith("_")} for line in lines]


def as_csv(lines: list[Line]) -> str:
    out = io.StringIO()
    names = [f.name for f in fields(Line) if not f.name.startswith("_")]
    writer = csv.DictWriter(out, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for line in as_dicts(lines):
        writer.writerow({k: _cell(v) for k, v in line.items()})
    return out.getvalue()


def _cell(value: object) -> str:
    """Numbers rounded for reading; a user or machine name never starts a spreadsheet
    formula (CSV injection)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def as_table(lines: list[Line], currency: str) -> str:
    header = ["USER", "MACHINE", "SESSIONS", "HOURS", "CORE-H", f"COST ({currency})", "EFFIC."]
    body = [
        [
            line.user,
            line.machine,
            str(line.sessions),
            f"{line.hours:.2f}",
            f"{line.core_hours:.2f}",
            f"{line.cost:.2f}",
            "-" if line.efficiency is None else f"{line.efficiency:.0%}",
        ]
        for line in lines
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip()
        for r in [header, *body]
    )
