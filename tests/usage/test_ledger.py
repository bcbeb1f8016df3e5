"""The ledger on SQLite and on a real PostgreSQL: sessions, their cost at the rate of
their start, and what users' and groups' budgets have spent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from hubstack.config.usage import Budget, UsageSettings
from hubstack.usage import audit
from hubstack.usage.budgets import Scope
from hubstack.usage.ledger import Ledger, Opened, Reading
from hubstack.usage.meter import Meter
from hubstack.usage.overrides import BudgetBook
from hubstack.usage.pricing import Rate
from usage.postgres import postgres_cluster

T0 = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_cluster() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'usage.sqlite'}"
    return request.getfixturevalue("postgres_url")


def opened(user: str, money: float, cores: float = 1, groups: tuple[str, ...] = ()) -> Opened:
    return Opened(
        user=user,
        server="",
        backend="local",
        machine="small",
        fields={"machine": "small"},
        rate=Rate(money=money, cores=cores, memory=2**30, gpus=0),
        currency="EUR",
        groups=frozenset(groups),
    )


def test_a_session_is_charged_at_the_rate_it_started_with(database: str) -> None:
    ledger = Ledger(database)
    user = f"rate-{database[:5]}"
    first = ledger.open(opened(user, money=2.0, cores=2), T0)
    ledger.meter(first, T0 + HOUR, cpu_seconds=1800.0, peak_memory=10)
    ledger.meter(first, T0 + HOUR / 2, cpu_seconds=900.0, peak_memory=5)  # late: ignored
    # A price change: the next session has a new rate, the first keeps its own.
    second = ledger.open(opened(user, money=10.0), T0 + HOUR)
    ledger.close(second, T0 + 2 * HOUR)
    row = ledger.get(first)
    assert row is not None
    assert (row.metered, row.cpu_seconds, row.peak_memory) == (T0 + HOUR, 1800.0, 10)
    spent = ledger.spent([Scope("user", user)], T0, T0 + 10 * HOUR)
    assert spent[Scope("user", user)].money == pytest.approx(2.0 + 10.0)
    assert spent[Scope("user", user)].core_hours == pytest.approx(2 + 1)


def test_closing_twice_or_metering_after_close_counts_nothing_more(database: str) -> None:
    ledger = Ledger(database)
    user = f"twice-{database[:5]}"
    session = ledger.open(opened(user, money=1.0), T0)
    ledger.close(session, T0 + HOUR)
    ledger.close(session, T0 + 3 * HOUR)
    ledger.meter(session, T0 + 5 * HOUR)
    # A second ledger on the same database (a restarted hub) sees the same.
    again = Ledger(database)
    spent = again.spent([Scope("user", user)], T0, T0 + 10 * HOUR)
    assert spent[Scope("user", user)].money == pytest.approx(1.0)
    row = again.get(session)
    assert row is not None and row.stopped == T0 + HOUR


def test_group_budgets_count_the_groups_at_the_start(database: str) -> None:
    ledger = Ledger(database)
    tag = database[:5]
    group, other = f"lab-{tag}", f"art-{tag}"
    ledger.close(ledger.open(opened(f"a-{tag}", 1.0, groups=(group,)), T0), T0 + HOUR)
    ledger.close(ledger.open(opened(f"b-{tag}", 2.0, groups=(group, other)), T0), T0 + HOUR)
    ledger.close(ledger.open(opened(f"c-{tag}", 4.0), T0), T0 + HOUR)
    scopes = [Scope("group", group), Scope("group", other), Scope("user", f"c-{tag}")]
    spent = ledger.spent(scopes, T0, T0 + HOUR)
    assert [spent[s].money for s in scopes] == pytest.approx([3.0, 2.0, 4.0])


def test_only_the_window_is_charged(database: str) -> None:
    ledger = Ledger(database)
    user = f"window-{database[:5]}"
    running = ledger.open(opened(user, money=1.0), T0 - HOUR)
    ledger.meter(running, T0 + HOUR)
    ledger.close(ledger.open(opened(user, 5.0), T0 - 3 * HOUR), T0 - 2 * HOUR)
    spent = ledger.spent([Scope("user", user)], T0, T0 + 10 * HOUR)
    assert spent[Scope("user", user)].money == pytest.approx(1.0)
    assert [r.id for r in ledger.sessions(T0, T0 + HOUR, users=[user])] == [running]


def test_the_audit_log_is_append_only(database: str) -> None:
    ledger = Ledger(database)
    user = f"audited-{database[:5]}"
    audit.record(ledger, T0, user, "start", user, "", "127.0.0.1", options={"machine": "s"})
    audit.record(ledger, T0 + HOUR, "hub", "stop", user, "", None, reason="budget")
    rows = audit.entries(ledger, T0, T0 + HOUR, user)
    assert [(r.actor, r.action, r.source) for r in rows] == [
        (user, "start", "127.0.0.1"),
        ("hub", "stop", None),
    ]
    lines = audit.as_json_lines(rows).splitlines()
    assert json.loads(lines[1])["detail"] == {"reason": "budget"}
    with pytest.raises(PermissionError), ledger.begin() as db:
        db.get(audit.AuditRow, rows[0].id).action = "nothing"  # type: ignore[union-attr]
    with pytest.raises(PermissionError), ledger.begin() as db:
        db.delete(db.get(audit.AuditRow, rows[0].id))
    assert len(audit.entries(ledger, T0, T0 + HOUR, user)) == 2


def test_the_database_refuses_to_change_or_remove_audit_rows(database: str) -> None:
    """Whoever sends the SQL: the triggers, not only hubstack's own sessions, refuse it."""
    ledger = Ledger(database)
    user = f"sealed-{database[:5]}"
    audit.record(ledger, T0, user, "login", user, "", "127.0.0.1")
    Ledger(database)  # a second start installs nothing twice
    for statement in (
        "UPDATE hubstack_audit SET action = 'nothing'",
        "DELETE FROM hubstack_audit",
        *(["TRUNCATE hubstack_audit"] if database.startswith("postgresql") else []),
    ):
        with pytest.raises(DBAPIError, match="append-only"), ledger.engine.begin() as db:
            db.execute(text(statement))
    (row,) = audit.entries(ledger, T0, T0, user)
    assert row.action == "login"


def test_a_meter_pass_counts_each_session_once_as_the_ledger_does(database: str) -> None:
    """Readings written in one statement only move figures forward; a pass's spending per
    user and group is the ledger's own, before and after a session stops."""
    ledger = Ledger(database)
    meter = Meter(ledger)
    settings = UsageSettings(period="1d")
    user, group = f"meter-{database[:5]}", f"metered-{database[:5]}"
    stopped = ledger.open(opened(user, money=1.0, groups=(group,)), T0)
    ledger.close(stopped, T0 + HOUR)
    running = ledger.open(opened(user, money=2.0, cores=2, groups=(group,)), T0)
    alone = ledger.open(opened(f"{user}-b", money=4.0, groups=(group,)), T0)
    scopes = [Scope("user", user), Scope("group", group)]
    day = (datetime(2026, 3, 14, tzinfo=UTC), datetime(2026, 3, 15, tzinfo=UTC))

    meter.read(Reading(running, T0 + HOUR, 60.0, 10))
    meter.read(Reading(alone, T0 + HOUR))
    spent = meter.spent(settings, T0 + HOUR, timedelta(0))
    assert {s: spent[s] for s in scopes} == ledger.spent(scopes, *day)
    assert spent[Scope("group", group)].money == pytest.approx(1 + 2 + 4)
    running_before = meter.running_by_machine()["small"]  # with other tests' on PostgreSQL
    assert running_before >= 2
    ledger.record([Reading(running, T0 + HOUR / 2, 30.0, 5)])  # late: changes nothing
    assert (ledger.get(running).metered, ledger.get(running).cpu_seconds) == (T0 + HOUR, 60.0)  # type: ignore[union-attr]

    meter.read(Reading(running, T0 + 2 * HOUR))
    meter.close(running, lambda row: row.metered)  # its last reading is written first
    meter.read(Reading(alone, T0 + 2 * HOUR))
    spent = meter.spent(settings, T0 + 2 * HOUR, timedelta(0))
    assert {s: spent[s] for s in scopes} == ledger.spent(scopes, *day)
    assert spent[Scope("user", user)].money == pytest.approx(1 + 2 * 2)
    assert spent[Scope("group", group)].money == pytest.approx(1 + 2 * 2 + 4 * 2)
    assert meter.running_by_machine()["small"] == running_before - 1


def test_budgets_changed_at_run_time_are_kept_and_undone(database: str) -> None:
    """A change is in force at once and after a restart; removing it brings back the
    config's budget."""
    user = f"changed-{database[:5]}"
    settings = UsageSettings(budgets={"users": {user: {"money": 5}}})
    book = BudgetBook(Ledger(database), settings)
    old = book.set(Scope("user", user), Budget(core_hours=3), "admin", T0)
    assert old == Budget(money=5)
    book.set(Scope("group", "new-group"), Budget(money=1), "admin", T0)
    again = BudgetBook(Ledger(database), settings)
    assert again.settings.budgets.users[user] == Budget(core_hours=3)
    assert again.settings.budgets.groups["new-group"] == Budget(money=1)
    (entry,) = [e for e in again.entries() if e.scope == Scope("user", user)]
    assert (entry.changed_by, entry.changed_at) == ("admin", T0)
    assert again.set(Scope("user", user), None, "admin", T0) == Budget(core_hours=3)
    assert again.settings.budgets.users[user] == Budget(money=5)
    assert BudgetBook(Ledger(database), settings).get(Scope("user", user)) == Budget(money=5)
