"""Champions on a real hub: JupyterHub's own REST API and admin page let a champion of a
group see and manage its members and their servers, and nothing outside it; admins change
champions with ``hubstack group`` while the hub runs.

JupyterHub refuses an action on someone out of a filtered scope's reach with 404 ("No
access to resources or resources not found"), the answer for someone who does not exist,
so that a champion cannot tell who else has an account; without the scope at all, 403."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests
from conftest import needs_default_env, needs_root
from hubtest import Hub, Session, running_hub, wait_for

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]

OUT_OF_REACH = 404
GROUPS = {
    "lab": {"display": "The lab", "champions": ["ch-chris"], "members": ["ch-mia"]},
    "other": {"members": ["ch-olga"]},
    "staff": {"source": "provider"},
}


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with running_hub({"groups": GROUPS}) as running:
        yield running


@pytest.fixture(scope="module")
def chris(hub: Hub) -> Session:
    return hub.new_user("ch-chris")


@pytest.fixture(scope="module")
def mia(hub: Hub) -> Session:
    return hub.new_user("ch-mia")


@pytest.fixture(scope="module")
def olga(hub: Hub) -> Session:
    return hub.new_user("ch-olga")


def names(resp: requests.Response) -> set[str]:
    assert resp.status_code == 200, resp.text
    return {item["name"] for item in resp.json()}


def test_config_groups_exist_with_their_members(hub: Hub, mia: Session, olga: Session) -> None:
    admin = hub.login("admin", hub.admin_password)
    groups = {g["name"]: set(g["users"]) for g in admin.api("GET", "/groups").json()}
    assert groups["lab"] == {"ch-mia"} and groups["lab-champions"] == {"ch-chris"}
    assert groups["other"] == {"ch-olga"} and groups["staff"] == set()


def test_champion_manages_the_group_and_nothing_else(
    hub: Hub, chris: Session, mia: Session, olga: Session
) -> None:
    assert names(chris.api("GET", "/users")) == {"ch-mia"}
    assert names(chris.api("GET", "/groups")) == {"lab"}
    assert chris.api("GET", "/users/ch-mia").status_code == 200
    assert chris.api("GET", "/users/ch-olga").status_code == OUT_OF_REACH
    assert chris.api("GET", "/groups/other").status_code == OUT_OF_REACH
    assert chris.api("POST", "/users/ch-olga/server", json={}).status_code == OUT_OF_REACH
    assert chris.api("DELETE", "/users/ch-olga/server").status_code == OUT_OF_REACH
    for method in ("POST", "DELETE"):
        resp = chris.api(method, "/groups/other/users", json={"users": ["ch-mia"]})
        assert resp.status_code == OUT_OF_REACH, resp.text
    resp = chris.api("POST", "/groups/lab-champions/users", json={"users": ["ch-mia"]})
    assert resp.status_code == OUT_OF_REACH, "champions do not make champions"
    resp = chris.api("POST", "/groups/staff/users", json={"users": ["ch-mia"]})
    assert resp.status_code == OUT_OF_REACH, "the provider keeps a provider group's members"
    assert mia.api("GET", "/users").status_code == 403, "a member is no champion"
    assert olga.model() is None, "nothing was started"
    admin = hub.login("admin", hub.admin_password)
    groups = {g["name"]: set(g["users"]) for g in admin.api("GET", "/groups").json()}
    assert groups["other"] == {"ch-olga"} and groups["lab-champions"] == {"ch-chris"}
    assert groups["staff"] == set()

    # Adding someone brings them into view; removing them takes them out again.
    resp = chris.api("POST", "/groups/lab/users", json={"users": ["ch-olga"]})
    assert resp.status_code == 200 and "ch-olga" in resp.json()["users"]
    assert chris.api("GET", "/users/ch-olga").status_code == 200
    assert chris.api("DELETE", "/groups/lab/users", json={"users": ["ch-olga"]}).ok
    assert chris.api("GET", "/users/ch-olga").status_code == OUT_OF_REACH

    # An admin added to the group would hand the champion the admin's servers.
    resp = chris.api("POST", "/groups/lab/users", json={"users": ["ch-olga", "admin"]})
    assert resp.status_code == 403 and "admin is a hub admin" in resp.json()["message"]
    lab = admin.api("GET", "/groups/lab").json()["users"]
    assert "admin" not in lab and "ch-olga" not in lab, "a refused request adds no one"
    assert admin.api("POST", "/groups/lab/users", json={"users": ["admin"]}).ok, "admins may"
    assert admin.api("DELETE", "/groups/lab/users", json={"users": ["admin"]}).ok


def test_champion_sees_the_admin_page_members_do_not(
    hub: Hub, chris: Session, mia: Session
) -> None:
    assert chris.http.get(f"{hub.url}/hub/admin", timeout=60).status_code == 200
    assert mia.http.get(f"{hub.url}/hub/admin", timeout=60).status_code == 403


def test_champion_stops_and_starts_a_members_server_but_cannot_enter_it(
    hub: Hub, chris: Session, mia: Session
) -> None:
    assert mia.start().status_code in (201, 202)
    mia.wait_ready()
    entry = requests.get(
        f"{mia.server_url()}api/status",
        headers={"Authorization": f"token {chris.token}"},
        timeout=60,
        allow_redirects=False,
    )
    assert entry.status_code == 403, "a champion does not get into a member's server"
    resp = chris.api("DELETE", "/users/ch-mia/server")
    assert resp.status_code in (202, 204), resp.text
    wait_for(lambda: mia.model() is None, 60, "the champion's stop")
    resp = chris.api("POST", "/users/ch-mia/server", json={"user_options": {}})
    assert resp.status_code in (201, 202), resp.text
    wait_for(lambda: (mia.model() or {}).get("ready"), 120, "the champion's start")
    mia.stop()


def test_cli_changes_champions_while_the_hub_runs(hub: Hub, mia: Session) -> None:
    carl = hub.new_user("ch-carl")
    assert carl.api("GET", "/users").status_code == 403
    added = hub.cli("group", "add-champion", "lab", "ch-carl")
    assert added.returncode == 0, added.stderr
    assert names(carl.api("GET", "/users")) == {"ch-mia"}
    shown = json.loads(hub.cli("group", "show", "lab", "--json").stdout)
    assert set(shown["champions"]) == {"ch-carl", "ch-chris"}
    assert shown["members"] == ["ch-mia"] and shown["source"] == "hub"
    removed = hub.cli("group", "remove-champion", "lab", "ch-carl")
    assert removed.returncode == 0, removed.stderr
    assert carl.api("GET", "/users").status_code == 403
    assert "lab" in hub.cli("group", "list").stdout


def test_cli_refuses_with_a_message(hub: Hub) -> None:
    refused = hub.cli("group", "add-member", "staff", "ch-mia")
    assert refused.returncode == 1 and "login provider" in refused.stderr
    unknown = hub.cli("group", "add-member", "nope", "ch-mia")
    assert unknown.returncode == 1 and "'nope' is not a group" in unknown.stderr
    nobody = hub.cli("group", "add-member", "lab", "ch-nobody")
    assert nobody.returncode == 1 and "ch-nobody" in nobody.stderr


def test_admin_makes_a_champion_as_the_admin_page_does(hub: Hub, mia: Session) -> None:
    """The admin page edits the champions' group through the REST API."""
    admin = hub.login("admin", hub.admin_password)
    dora = hub.new_user("ch-dora")
    assert admin.api("POST", "/groups/lab-champions/users", json={"users": ["ch-dora"]}).ok
    assert names(dora.api("GET", "/users")) == {"ch-mia"}
    assert admin.api("DELETE", "/groups/lab-champions/users", json={"users": ["ch-dora"]}).ok
    assert dora.api("GET", "/users").status_code == 403
