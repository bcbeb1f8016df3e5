"""Invitations on a real hub with built-in accounts: a champion makes a link (REST API and
page); following it makes an account in the group, or adds someone logged in; links that
expired, are used up or unknown are refused with a page saying so; links survive ``kill
-9`` of the hub; the code never appears in the hub's log."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests
from conftest import needs_root
from hubprocesses import kill_hub
from hubtest import Hub, Session, running_hub

pytestmark = [pytest.mark.e2e, needs_root]

GROUPS = {
    "workshop": {"display": "Friday workshop", "champions": ["inv-chris"]},
    "closed": {"members": ["inv-olga"]},
}


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with running_hub({"groups": GROUPS}) as running:
        yield running


@pytest.fixture(scope="module")
def chris(hub: Hub) -> Session:
    return hub.new_user("inv-chris")


@pytest.fixture(scope="module")
def admin(hub: Hub) -> Session:
    return hub.login("admin", hub.admin_password)


def invite(chris: Session, uses: int = 1, group: str = "workshop") -> str:
    return made(chris, uses, group)["url"]


def made(chris: Session, uses: int = 1, group: str = "workshop") -> dict:
    resp = chris.api(
        "POST", f"/groups/{group}/invitations", json={"expires_in": "1h", "uses": uses}
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["uses"] == uses and resp.json()["created_by"] == "inv-chris"
    return resp.json()


def members(admin: Session, group: str = "workshop") -> set[str]:
    return set(admin.api("GET", f"/groups/{group}").json()["users"])


def sign_up(url: str, name: str, password: str, confirm: str | None = None) -> requests.Response:
    """Follow ``url`` as someone with no account and fill in its form."""
    http = requests.Session()
    page = http.get(url, timeout=60)
    if page.status_code != 200:
        return page
    assert "Make my account" in page.text
    form = {
        "username": name,
        "password": password,
        "confirm": password if confirm is None else confirm,
        "_xsrf": http.cookies.get("_xsrf", path="/hub/"),
    }
    return http.post(url, data=form, timeout=60)


def test_invitation_makes_an_account_in_the_group(hub: Hub, chris: Session, admin: Session) -> None:
    url = invite(chris, uses=2)
    assert "invite_code=" in url
    resp = sign_up(url, "inv-ann", "correct horse battery", "other")
    assert resp.status_code == 400 and "passwords differ" in resp.text
    resp = sign_up(url, "inv-chris", "correct horse battery")
    assert resp.status_code == 400 and "is taken" in resp.text
    resp = sign_up(url, "Not A Name", "correct horse battery")
    assert resp.status_code == 400 and "user name" in resp.text

    resp = sign_up(url, "inv-ann", "correct horse battery")
    assert resp.status_code == 200 and "inv-ann is ready" in resp.text
    ann = hub.login("inv-ann", "correct horse battery")
    assert "workshop" in ann.api("GET", "/users/inv-ann").json()["groups"]
    assert sign_up(url, "inv-ben", "another long pass").status_code == 200
    assert members(admin) == {"inv-ann", "inv-ben"}

    used_up = sign_up(url, "inv-cid", "yet another pass")
    assert used_up.status_code == 410 and "used up" in used_up.text
    unknown = requests.get(url + "x", timeout=60)
    assert unknown.status_code == 404 and "not valid" in unknown.text
    assert requests.get(f"{hub.url}/hub/invite", timeout=60).status_code == 404
    assert "inv-cid" not in {u["name"] for u in admin.api("GET", "/users").json()}


def test_logged_in_person_joins_with_the_link(hub: Hub, chris: Session, admin: Session) -> None:
    dan = hub.new_user("inv-dan")
    url = invite(chris)
    page = dan.http.get(url, timeout=60)
    assert page.status_code == 200 and "Join workshop" in page.text
    xsrf = dan.http.cookies.get("_xsrf", path="/hub/")
    joined = dan.http.post(url, data={"_xsrf": xsrf}, timeout=60)
    assert joined.status_code == 200 and "You are in the group workshop" in joined.text
    assert "inv-dan" in members(admin)


def test_expired_invitation_is_refused(hub: Hub, chris: Session) -> None:
    invitation = made(chris)
    # An hour is too long to wait: the test moves the link's expiry into the past.
    with sqlite3.connect(hub.data_dir / "jupyterhub.sqlite") as db:
        past = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=1)
        db.execute(
            "UPDATE hubstack_invitations SET expires_at = ? WHERE id = ?",
            (past.isoformat(" "), invitation["id"]),
        )
    url = invitation["url"]
    resp = sign_up(url, "inv-eve", "a long password")
    assert resp.status_code == 410 and "expired" in resp.text


def test_who_may_invite_and_what_is_refused(hub: Hub, chris: Session, admin: Session) -> None:
    olga = hub.new_user("inv-olga")
    body = {"expires_in": "1h", "uses": 3}
    assert olga.api("POST", "/groups/workshop/invitations", json=body).status_code == 403
    assert olga.api("POST", "/groups/closed/invitations", json=body).status_code == 403
    assert chris.api("POST", "/groups/closed/invitations", json=body).status_code == 404
    for bad, message in (({"expires_in": "1y"}, "expires_in"), ({"uses": -1}, "uses")):
        resp = chris.api("POST", "/groups/workshop/invitations", json=bad)
        assert resp.status_code == 400 and message in resp.json()["message"], resp.text
    resp = admin.api("POST", "/groups/nope/invitations", json=body)
    assert resp.status_code == 404 and "not one of this hub's groups" in resp.json()["message"]
    made(chris, uses=3)
    listed = chris.api("GET", "/groups/workshop/invitations").json()["invitations"]
    assert [(i["uses"], i["used"]) for i in listed] == [(3, 0)], "only usable ones"
    assert all("url" not in i and "code_hash" not in i for i in listed)


def test_invitation_page_makes_a_link(hub: Hub, chris: Session) -> None:
    page_url = f"{hub.url}/hub/groups/workshop/invitations"
    page = chris.http.get(page_url, timeout=60)
    assert page.status_code == 200 and "Invitations to Friday workshop" in page.text
    xsrf = chris.http.cookies.get("_xsrf", path="/hub/")
    made = chris.http.post(page_url, data={"expires_in": "2d", "uses": "5", "_xsrf": xsrf})
    assert made.status_code == 201
    link = re.search(r'value="(http[^"]+invite_code=[^"]+)"', made.text)
    assert link and requests.get(link.group(1), timeout=60).status_code == 200
    bad = chris.http.post(page_url, data={"expires_in": "never", "uses": "5", "_xsrf": xsrf})
    assert bad.status_code == 400 and "expires_in" in bad.text


def test_invitation_survives_kill_of_the_hub(hub: Hub, chris: Session, admin: Session) -> None:
    url = invite(chris)
    kill_hub(hub)
    hub.start()
    assert sign_up(url, "inv-fay", "survived a crash").status_code == 200
    assert "inv-fay" in members(admin)


def test_codes_never_reach_the_log(hub: Hub, chris: Session) -> None:
    url = invite(chris)
    requests.get(url, timeout=60)
    requests.get(url + "x", timeout=60)
    code = url.split("invite_code=")[1]
    assert code not in hub.log()
    assert "invite_code=[secret]" in hub.log()
