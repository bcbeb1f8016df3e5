"""``/hub/usage``: spending per user, group, machine type and day, with a chart, filters and
a CSV download of its table.

It reads what the usage REST API reads, with the same rights, taken from the person's
JupyterHub scopes: ``read:users`` (a user's own, a champion's ``!group=G`` members', an
admin's everyone's) and ``read:groups`` (a champion's group's sessions). A page in the hub
rather than a service: the rights are the caller's scopes, which only the hub knows
first-hand (as for the storage page).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from jupyterhub import orm
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.scopes import Scope
from sqlalchemy.orm import Session
from tornado import web

from hubstack.config import Config
from hubstack.hub.usage import ledger_for
from hubstack.usage.breakdown import DAY, Day, GroupLine, midnight, per_day, per_group
from hubstack.usage.chart import Chart, stacked_bars
from hubstack.usage.ledger import Ledger, ledger_url
from hubstack.usage.report import Line, Window, as_csv, report

MAX_DAYS = 366
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Reach:
    """Whose sessions a person may read: everyone's (``users`` None), or those of ``users``
    and the sessions counted against ``groups``."""

    users: frozenset[str] | None
    groups: frozenset[str]


def reach_of(parsed_scopes: dict[str, Any], db: Session) -> Reach:
    """What the person's ``read:users`` and ``read:groups`` scopes let them read, as the
    REST API's ``needs_scope`` checks would one user or group at a time."""
    read_users = parsed_scopes.get("read:users")
    if read_users == Scope.ALL:
        return Reach(None, frozenset())
    users: set[str] = set()
    if read_users:
        users |= set(read_users.get("user", ()))
        for name in read_users.get("group", ()):
            group = orm.Group.find(db, name)
            users |= {user.name for user in group.users} if group else set()
    read_groups = parsed_scopes.get("read:groups")
    if read_groups == Scope.ALL:
        groups = {group.name for group in db.query(orm.Group)}
    else:
        groups = set(read_groups.get("group", ())) if read_groups else set()
    return Reach(frozenset(users), frozenset(groups))


@dataclass(frozen=True)
class Filters:
    """What the person asked to see; ``None``: no narrowing."""

    window: Window
    user: str | None = None
    group: str | None = None
    machine: str | None = None


@dataclass
class UsageView:
    lines: list[Line]
    groups: list[GroupLine]
    days: list[Day]
    chart: Chart
    total: float
    choices: dict[str, list[str]]  # the values each filter offers


def usage_view(ledger: Ledger, config: Config, reach: Reach, filters: Filters) -> UsageView:
    """The page's numbers, from the sessions ``reach`` allows narrowed by ``filters``;
    blocking (run in a thread)."""
    since, until = filters.window.since, filters.window.until
    users = None if reach.users is None else sorted(reach.users)
    groups = None if reach.users is None else sorted(reach.groups)
    rows = ledger.charged(since, until, users, groups)
    session_groups = ledger.session_groups(since, until, users, groups)
    choices = {
        "user": sorted({row.user for row in rows}),
        "group": sorted({name for names in session_groups.values() for name in names}),
        "machine": sorted({m.id for m in config.machines} | {row.machine for row in rows}),
    }
    rows = [
        row
        for row in rows
        if filters.user in (None, row.user)
        and filters.machine in (None, row.machine)
        and (filters.group is None or filters.group in session_groups.get(row.id, ()))
    ]
    lines = report(rows, since, until)
    days = per_day(rows, since, until)
    return UsageView(
        lines=lines,
        groups=per_group(rows, session_groups, since, until),
        days=days,
        chart=stacked_bars(days, config.usage.currency),
        total=sum(line.cost for line in lines),
        choices=choices,
    )


def parse_day(name: str, text: str) -> date:
    try:
        if not DATE.fullmatch(text):
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise web.HTTPError(400, f"{name}: {text[:40]!r} is not a date like 2026-01-31") from None


def window_of(config: Config, start: str | None, end: str | None, now: datetime) -> Window:
    """From the start of day ``start`` to the end of day ``end`` (not beyond now); by
    default the current budget period."""
    default = Window.of(config.usage, now, None)
    first = parse_day("from", start) if start else default.since.date()
    last = parse_day("to", end) if end else default.until.date()
    if last < first:
        raise web.HTTPError(400, f"to: {last} is before from: {first}")
    if (last - first).days >= MAX_DAYS:
        raise web.HTTPError(400, f"from, to: at most {MAX_DAYS} days at a time")
    since = midnight(first) if start else default.since
    until = min(midnight(last) + DAY, now) if end else default.until
    return Window(since, max(since, until))


class UsagePageHandler(BaseHandler):
    def initialize(self, config: Config) -> None:
        self.hubstack = config

    def _filters(self) -> Filters:
        arg = self.get_argument
        window = window_of(self.hubstack, arg("from", None), arg("to", None), datetime.now(UTC))
        machine = arg("machine", "") or None
        known = [m.id for m in self.hubstack.machines]
        if machine is not None and machine not in known:
            raise web.HTTPError(400, f"machine: {machine[:40]!r} is not one of {', '.join(known)}")
        return Filters(window, arg("user", "") or None, arg("group", "") or None, machine)

    @web.authenticated
    async def get(self) -> None:
        filters = self._filters()
        reach = reach_of(self.parsed_scopes, self.db)
        ledger = ledger_for(ledger_url(self.hubstack))
        view = await asyncio.to_thread(usage_view, ledger, self.hubstack, reach, filters)
        window = filters.window
        if self.get_argument("format", "") == "csv":
            name = f"usage-{window.since:%Y-%m-%d}-{window.until:%Y-%m-%d}.csv"
            self.set_header("Content-Type", "text/csv; charset=utf-8")
            self.set_header("Content-Disposition", f'attachment; filename="{name}"')
            self.finish(as_csv(view.lines))
            return
        html = await self.render_template(
            "usage.html",
            view=view,
            filters=filters,
            shown_to=(window.until - timedelta(microseconds=1)).date(),
            currency=self.hubstack.usage.currency,
            everyone=reach.users is None,
            csv_query=urlencode(
                {k: v for k, v in self.request.query_arguments.items() if k != "format"}
                | {"format": "csv"},
                doseq=True,
            ),
        )
        self.finish(html)


def handlers(config: Config) -> list[tuple[str, type, dict[str, Any]]]:
    """JupyterHub ``extra_handlers`` (paths below /hub/)."""
    return [(r"/usage", UsagePageHandler, {"config": config})]
