"""Budgets on a real hub: costs accrue for a running server at the rate of its start, 80 %
warns, 100 % stops it after the grace period and refuses new starts (REST API and named
servers alike, with the budget and its reset named), group budgets apply, and a hub killed
with ``kill -9`` loses no session and counts none twice."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from alertsink import scrape
from conftest import needs_default_env, needs_root
from hubprocesses import kill_hub
from hubtest import Hub, Session, running_hub, wait_for

from hubstack.usage.budgets import Scope
from hubstack.usage.ledger import Ledger, SessionRow

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]

PRICE = 360.0  # per hour: 0.1 a second
BUDGET = 2.0  # about 20 s of a small server
SPENDER, GROUPED, STEADY, CHAMPION = "ub-spender", "ub-grouped", "ub-steady", "ub-champion"


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    usage = {
        "prices": {"machines": {"small": PRICE}},
        "budgets": {
            "users": {SPENDER: {"money": BUDGET}},
            "groups": {"broke": {"money": 0}},
        },
        "period": "1d",
        "grace": "6s",
        "meter_interval": "2s",
    }
    groups = {"broke": {"members": [GROUPED], "champions": [CHAMPION]}}
    with running_hub({"usage": usage, "groups": groups}) as hub:
        yield hub


@pytest.fixture(scope="module")
def spender(hub: Hub) -> Session:
    return hub.new_user(SPENDER)


@pytest.fixture(scope="module")
def member(hub: Hub) -> Session:
    return hub.new_user(GROUPED)


def ledger(hub: Hub) -> Ledger:
    return Ledger(f"sqlite:///{hub.data_dir / 'usage.sqlite'}")


def sessions_of(hub: Hub, user: str) -> list[SessionRow]:
    return ledger(hub).sessions(datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC), [user])


def home(session: Session) -> str:
    return session.http.get(f"{session.hub.url}/hub/home", timeout=30).text


def test_spending_warns_then_stops_the_server_and_refuses_new_ones(
    hub: Hub, spender: Session
) -> None:
    assert spender.start("", {"machine": "small"}).status_code in (201, 202)
    spender.wait_ready()
    (row,) = sessions_of(hub, SPENDER)
    assert (row.rate, row.machine, row.cores, row.stopped) == (PRICE, "small", 1.0, None)

    wait_for(lambda: "% of the user budget of ub-spender is used" in home(spender), 90, "80 %")
    wait_for(lambda: "this server stops at" in home(spender), 60, "the spent budget's notice")
    wait_for(lambda: spender.model() is None, 60, "the server stopped after the grace period")
    assert "it was stopped because the user budget of ub-spender" in home(spender)

    (row,) = sessions_of(hub, SPENDER)
    assert row.stopped is not None and row.over_budget_since is not None
    # Charged at its rate up to its stop: the budget plus at most the grace and a poll.
    assert BUDGET <= row.charge_total.money <= BUDGET + (6 + 2 * 2 + 2) * PRICE / 3600

    for server, options in (("", {}), ("other", {"machine": "tiny"}), ("", {"machine": "x"})):
        refused = spender.start(server, options)
        assert refused.status_code == 400, refused.text
        if options.get("machine") != "x":
            message = refused.json()["message"]
            assert message.startswith("No new server can start: the user budget of ub-spender")
            assert "It resets on" in message
    assert spender.model("other", include_stopped=True) is None
    assert len(sessions_of(hub, SPENDER)) == 1

    audit = [json.loads(line) for line in hub.cli("audit", "--user", SPENDER).stdout.splitlines()]
    assert [(e["action"], e["actor"]) for e in audit] == [("start", SPENDER), ("stop", "hub")]
    assert audit[0]["source"] == "127.0.0.1" and audit[0]["detail"]["options"]["machine"] == "small"
    assert audit[1]["detail"]["reason"].startswith("it was stopped because the user budget")


def test_a_spent_group_budget_refuses_its_members(hub: Hub, member: Session) -> None:
    for server in ("", "named"):
        refused = member.start(server, {"machine": "tiny"})
        assert refused.status_code == 400, refused.text
        assert "the group budget of broke" in refused.json()["message"]
    assert sessions_of(hub, GROUPED) == []


def test_usage_is_read_by_its_user_the_group_champions_and_no_one_else(
    hub: Hub, spender: Session, member: Session
) -> None:
    champion = hub.new_user(CHAMPION)
    own = spender.api("GET", f"/usage/users/{SPENDER}?since=1d")
    assert own.status_code == 200, own.text
    (line,) = own.json()["lines"]
    assert (line["user"], line["machine"], line["sessions"]) == (SPENDER, "small", 1)
    assert line["cost"] >= BUDGET
    for reader, path in (
        (member, f"/usage/users/{SPENDER}"),
        (spender, f"/usage/users/{GROUPED}"),
        (member, "/usage/groups/broke"),
        (champion, f"/usage/users/{SPENDER}"),
    ):
        refused = reader.api("GET", path)
        assert refused.status_code in (403, 404), (reader.name, path, refused.text)
    for path in (f"/usage/users/{GROUPED}", "/usage/groups/broke"):
        assert champion.api("GET", path).json()["lines"] == []
    bad = spender.api("GET", f"/usage/users/{SPENDER}?since=soon")
    assert bad.status_code == 400 and "since:" in bad.json()["message"]


def test_the_spawn_form_shows_prices_and_the_budget(hub: Hub, spender: Session) -> None:
    form = spender.http.get(f"{hub.url}/hub/spawn", timeout=30).text
    assert f"Price per hour: Small {PRICE:.2f} EUR." in form
    assert f"The user budget of {SPENDER}: " in form and f"of {BUDGET:.2f} EUR used (resets" in form


def test_metrics_show_spending_and_what_is_left(hub: Hub) -> None:
    metrics = scrape(hub.login("admin", hub.admin_password))
    labels = {"scope": "user", "name": SPENDER, "unit": "money"}
    spent = labelled(metrics["hubstack_usage_spent"], labels)
    assert spent is not None and spent >= BUDGET
    assert labelled(metrics["hubstack_budget_remaining"], labels) == 0
    assert labelled(metrics["hubstack_usage_sessions_running"], {"machine": "small"}) == 0


def labelled(samples: list[Any], labels: dict[str, str]) -> float | None:
    """The sample with ``labels`` (one of which is called ``name``)."""
    return next((float(s.value) for s in samples if s.labels == labels), None)


def test_kill_9_loses_no_session_and_counts_none_twice(hub: Hub) -> None:
    steady = hub.new_user(STEADY)
    assert steady.start("", {"machine": "small"}).status_code in (201, 202)
    steady.wait_ready()
    (before,) = sessions_of(hub, STEADY)
    wait_for(lambda: sessions_of(hub, STEADY)[0].metered > before.started, 30, "a meter pass")

    kill_hub(hub)
    # A price change while the hub is down does not change the running session's rate.
    hub.overrides["usage"]["prices"]["machines"]["small"] = PRICE * 10
    hub.write_config()
    restarted = datetime.now(UTC)
    hub.start()
    wait_for(lambda: sessions_of(hub, STEADY)[0].metered > restarted, 60, "metering again")
    (row,) = sessions_of(hub, STEADY)
    assert (row.id, row.started, row.rate, row.stopped) == (before.id, before.started, PRICE, None)
    # What it used, from its cgroup, beside what it was given.
    assert row.cpu_seconds is not None and row.cpu_seconds > 0
    assert row.peak_memory is not None and 0 < row.peak_memory <= row.memory

    steady.stop()
    (row,) = sessions_of(hub, STEADY)
    assert row.stopped is not None and row.stopped >= restarted
    hours = (row.stopped - row.started).total_seconds() / 3600
    spent = ledger(hub).spent([Scope("user", STEADY)], row.started, datetime.now(UTC))
    assert spent[Scope("user", STEADY)].money == pytest.approx(PRICE * hours)
