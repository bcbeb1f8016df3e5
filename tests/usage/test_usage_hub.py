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
from browser.chromium import ARTIFACTS, chromium, needs_chromium
from conftest import needs_default_env, needs_root
from hubprocesses import kill_hub
from hubtest import Hub, Session, running_hub, wait_for
from playwright.sync_api import expect

from hubstack.usage.budgets import Scope
from hubstack.usage.ledger import Ledger, SessionRow

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]

PRICE = 360.0  # per hour: 0.1 a second
BUDGET = 2.0  # about 20 s of a small server
SPENDER, GROUPED, STEADY, CHAMPION = "ub-spender", "ub-grouped", "ub-steady", "ub-champion"
CAPPED, MADE, TEAM, LOWERED = "ub-capped", "ub-made", "ub-team", "ub-lowered"


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
    # Found spent only once it was (spending counts readings up to that moment), stopped no
    # sooner than the grace after, and charged at its rate up to its stop. (How soon after
    # the grace it stops depends on the machine's load: not asserted.)
    hours = (row.over_budget_since - row.started).total_seconds() / 3600
    assert hours * PRICE >= BUDGET
    assert (row.stopped - row.over_budget_since).total_seconds() >= 6
    ran = (row.stopped - row.started).total_seconds() / 3600
    assert row.charge_total.money == pytest.approx(PRICE * ran)

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
    audit = [e for e in audit if e["action"] in ("start", "stop")]  # not the login
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


@pytest.fixture(scope="module")
def admin(hub: Hub) -> Session:
    return hub.login("admin", hub.admin_password)


def audited(hub: Hub, user: str) -> list[dict[str, Any]]:
    """The audit log's entries about or by ``user``, as ``hubstack audit`` prints them."""
    return [json.loads(line) for line in hub.cli("audit", "--user", user).stdout.splitlines()]


@pytest.fixture(scope="module")
def capped(hub: Hub) -> Session:
    return hub.new_user(CAPPED)


def test_admins_change_budgets_at_run_time_and_starts_obey_at_once(
    hub: Hub, admin: Session, member: Session, capped: Session
) -> None:
    listed = admin.api("GET", "/usage/budgets").json()
    (entry,) = [b for b in listed["budgets"] if b["name"] == SPENDER]
    assert (entry["kind"], entry["money"], entry["source"]) == ("user", BUDGET, "config")

    changed = admin.api("PUT", f"/usage/budgets/users/{CAPPED}", json={"money": 0})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["source"], changed.json()["changed_by"]) == ("changed", "admin")
    refused = capped.start("", {"machine": "tiny"})  # no pass has seen the change yet
    assert refused.status_code == 400, refused.text
    assert refused.json()["message"].startswith(
        f"No new server can start: the user budget of {CAPPED}"
    )
    assert (
        f"The user budget of {CAPPED}: 0.00 of 0.00 EUR used"
        in capped.http.get(f"{hub.url}/hub/spawn", timeout=30).text
    )

    # Back to the config's (none) at once; then a group budget raised from 0 lets its members start.
    assert admin.api("DELETE", f"/usage/budgets/users/{CAPPED}").status_code == 204
    assert all(b["name"] != CAPPED for b in admin.api("GET", "/usage/budgets").json()["budgets"])
    assert admin.api("PUT", "/usage/budgets/groups/broke", json={"money": 100}).status_code == 200
    form = member.http.get(f"{hub.url}/hub/spawn", timeout=30).text
    assert "The group budget of broke: 0.00 of 100.00 EUR used" in form
    assert admin.api("PUT", "/usage/budgets/groups/broke", json={"money": 0}).status_code == 200

    for path, body, says in (
        (f"users/{CAPPED}", {"money": -1}, "money: Input should be greater than or equal to 0"),
        (f"users/{CAPPED}", {"money": 5, "period": "1d"}, "period: unknown key"),
        (f"users/{CAPPED}", {"core_hours": "lots"}, "core_hours: Input should be a valid number"),
        (f"users/{CAPPED}", {}, "a budget needs money, core_hours or both"),
        (f"users/{CAPPED}", [1], "Input should be a valid dictionary"),
        ("users/ub-nobody", {"money": 1}, "there is no hub user named 'ub-nobody'"),
        ("groups/no-such-group", {"money": 1}, "there is no hub group named 'no-such-group'"),
    ):
        bad = admin.api("PUT", f"/usage/budgets/{path}", json=body)
        assert bad.status_code == 400 and says in bad.json()["message"], (path, body, bad.text)
    bad = admin.api("PUT", f"/usage/budgets/users/{CAPPED}", data="{money")
    assert bad.status_code == 400, bad.text
    # Not an admin: not even a group's champion changes a budget.
    for who, path in ((capped, f"users/{CAPPED}"), (member, "groups/broke")):
        denied = who.api("PUT", f"/usage/budgets/{path}", json={"money": 1000})
        assert denied.status_code in (403, 404), denied.text
        assert who.api("GET", "/usage/budgets").status_code == 403
    assert capped.http.get(f"{hub.url}/hub/budgets", timeout=30).status_code == 403
    # The page's form needs JupyterHub's XSRF token, as every form of the hub.
    forged = admin.http.post(
        f"{hub.url}/hub/budgets", data={"kind": "users", "name": CAPPED, "money": "9"}, timeout=30
    )
    assert forged.status_code == 403

    entries = [e for e in audited(hub, CAPPED) if e["action"] == "budget"]
    assert [(e["actor"], e["source"], e["detail"]["old"], e["detail"]["new"]) for e in entries] == [
        ("admin", "127.0.0.1", None, {"money": 0.0, "core_hours": None}),
        ("admin", "127.0.0.1", {"money": 0.0, "core_hours": None}, None),
    ]
    assert admin.api("PUT", f"/usage/budgets/users/{CAPPED}", json={"money": 0}).status_code == 200


def test_a_budget_lowered_at_run_time_stops_a_running_server(hub: Hub, admin: Session) -> None:
    """The meter judges a running server by the budget in force now, not the config's."""
    lowered = hub.new_user(LOWERED)
    assert lowered.start("", {"machine": "tiny"}).status_code in (201, 202)
    lowered.wait_ready()
    put = admin.api("PUT", f"/usage/budgets/users/{LOWERED}", json={"core_hours": 0})
    assert put.status_code == 200, put.text
    wait_for(lambda: "this server stops at" in home(lowered), 60, "the meter's notice")
    wait_for(lambda: lowered.model() is None, 60, "the server stopped after the grace period")
    assert f"it was stopped because the user budget of {LOWERED}" in home(lowered)


@needs_chromium
def test_the_budgets_page_in_chromium_lists_and_changes_a_budget(hub: Hub, admin: Session) -> None:
    """An admin's browser: the page lists budgets with their source, and its form (with
    JupyterHub's XSRF token) changes one, escaped where it echoes input."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium() as browser:
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.goto(f"{hub.url}/hub/login")
        page.fill("#username_input", "admin")
        page.fill("#password_input", hub.admin_password)
        page.click("#login_submit")
        page.wait_for_url(lambda url: "/hub/login" not in url)
        page.goto(f"{hub.url}/hub/budgets")
        row = page.locator("#budgets tr", has_text=SPENDER)
        expect(row).to_contain_text(f"{BUDGET:.2f}")
        expect(row).to_contain_text("config")

        page.select_option("#kind", "users")
        page.fill("#name", SPENDER)
        page.fill("#money", "7.5")
        page.click("#set-budget button[type=submit]")
        expect(page.get_by_role("status")).to_have_text(f"Changed the user budget of {SPENDER}.")
        expect(row).to_contain_text("7.50")
        expect(row).to_contain_text("changed by admin at")
        page.screenshot(path=str(ARTIFACTS / "budgets-admin.png"), full_page=True)

        page.fill("#name", "<b>ub-nobody</b>")
        page.fill("#money", "1")
        page.click("#set-budget button[type=submit]")
        expect(page.get_by_role("alert")).to_have_text(
            "there is no hub user named '<b>ub-nobody</b>'"
        )
        row.get_by_role("button", name="Reset to config").click()
        expect(page.locator("#budgets tr", has_text=SPENDER)).to_contain_text("config")
    listed = admin.api("GET", "/usage/budgets").json()["budgets"]
    (entry,) = [b for b in listed if b["name"] == SPENDER]
    assert (entry["money"], entry["source"]) == (BUDGET, "config")


def test_logins_and_admin_changes_through_the_rest_api_are_audited(
    hub: Hub, admin: Session, spender: Session
) -> None:
    _, failed = hub.post_login(SPENDER, "not-the-password")
    assert failed.status_code == 403
    api = admin.api
    assert api("POST", f"/users/{MADE}").status_code == 201
    assert api("PATCH", f"/users/{MADE}", json={"admin": True}).status_code == 200
    assert api("POST", f"/groups/{TEAM}").status_code == 201
    assert api("POST", f"/groups/{TEAM}/users", json={"users": [MADE]}).status_code == 200
    assert api("DELETE", f"/groups/{TEAM}/users", json={"users": [MADE]}).status_code == 200
    assert api("DELETE", f"/groups/{TEAM}").status_code == 204
    assert api("DELETE", f"/users/{MADE}").status_code == 204
    assert api("DELETE", f"/users/{SPENDER}/server").status_code in (202, 204)

    def made_log() -> list[tuple[str, str, dict[str, Any]]] | None:
        # Not the spawner's own "delete" as the user goes: the admin's requests.
        found = [(e["action"], e["actor"], e["detail"]) for e in audited(hub, MADE)]
        found = [entry for entry in found if entry[1] == "admin"]
        return found if len(found) == 5 else None

    assert wait_for(made_log, 30, "the admin's changes in the audit log") == [
        ("user-create", "admin", {"admin": False}),
        ("user-change", "admin", {"admin": True}),
        ("group-add", "admin", {"group": TEAM}),
        ("group-remove", "admin", {"group": TEAM}),
        ("user-delete", "admin", {}),
    ]
    groups = [
        (e["action"], e["detail"]["group"]) for e in audited(hub, "admin") if "group" in e["detail"]
    ]
    assert ("group-create", TEAM) in groups and ("group-delete", TEAM) in groups

    spender = wait_for(
        lambda: (
            (found := audited(hub, SPENDER)) and found[-1]["action"] == "stop-request" and found
        ),
        30,
        "the stop by someone else",
    )
    assert (spender[-1]["actor"], spender[-1]["user"]) == ("admin", SPENDER)
    logins = [(e["action"], e["actor"], e["source"]) for e in spender if "login" in e["action"]]
    assert logins[0] == ("login", SPENDER, "127.0.0.1")
    assert ("login-failed", "anonymous", "127.0.0.1") in logins
    assert "not-the-password" not in hub.cli("audit").stdout


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


def test_budget_changes_outlive_the_killed_hub(hub: Hub, admin: Session, capped: Session) -> None:
    """After the restart above, the budget changed at run time is still in force."""
    listed = admin.api("GET", "/usage/budgets")
    (entry,) = [b for b in listed.json()["budgets"] if b["name"] == CAPPED]
    assert (entry["money"], entry["source"], entry["changed_by"]) == (0, "changed", "admin")
    refused = capped.start("", {"machine": "tiny"})
    assert refused.status_code == 400 and CAPPED in refused.json()["message"], refused.text
