"""Access by group on a real hub: the form lists what a person may pick, and a machine type
for a group is refused (HTTP 400, form and REST API) to anyone outside it, from the
membership the hub has at each start."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from conftest import needs_default_env, needs_root
from hubtest import Hub, Session, running_hub

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]

GROUP = "lab-a"
REFUSAL = "The machine type 'gpu' is for groups: lab-a, and you are in none of them."
MACHINES = [
    {"id": "small", "display": "Small", "cpu": 0.5, "memory": "400M"},
    {"id": "gpu", "display": "GPU node", "cpu": 0.5, "memory": "400M", "groups": [GROUP]},
]


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with running_hub({"machines": MACHINES}) as running:
        yield running


@pytest.fixture(scope="module")
def admin(hub: Hub) -> Session:
    session = hub.login("admin", hub.admin_password)
    assert session.api("POST", f"/groups/{GROUP}").status_code == 201
    return session


@pytest.fixture(scope="module")
def ben(hub: Hub) -> Session:
    return hub.new_user("gacc-ben")


def set_member(admin: Session, user: str, member: bool) -> None:
    """Add or remove ``user`` through the hub's REST API, as an admin or champion would."""
    resp = admin.api(
        "POST" if member else "DELETE", f"/groups/{GROUP}/users", json={"users": [user]}
    )
    assert resp.status_code == 200, resp.text
    assert (user in resp.json()["users"]) is member


def form(hub: Hub, session: Session) -> str:
    page = session.http.get(f"{hub.url}/hub/spawn/{session.name}", timeout=60)
    assert page.status_code == 200, page.text[-2000:]
    return html.unescape(page.content.decode())


def machines_on(page: str) -> list[str]:
    return re.findall(r'name="machine" id="[^"]*" value="([^"]*)"', page)


def form_post(hub: Hub, session: Session, server: str, data: dict[str, Any]) -> requests.Response:
    xsrf = session.http.cookies.get("_xsrf", path="/hub/")
    return session.http.post(
        f"{hub.url}/hub/spawn/{session.name}/{server}",
        data={**data, "_xsrf": xsrf},
        allow_redirects=False,
        timeout=60,
    )


def refused(resp: requests.Response) -> bool:
    return resp.status_code == 400 and REFUSAL in resp.json()["message"]


def test_a_group_machine_is_for_its_members_from_their_next_start(
    hub: Hub, admin: Session, ben: Session
) -> None:
    # Outside the group: the form offers only the open machine type, and every way of
    # asking for the group's one is refused, leaving no server behind.
    assert machines_on(form(hub, ben)) == ["small"]
    assert refused(ben.start("work", {"machine": "gpu"}))
    assert refused(ben.start("", {"machine": "gpu"}))
    assert refused(
        ben.api("PUT", ben.server_path("made"), json={"user_options": {"machine": "gpu"}})
    )
    # Nor can a person put themselves in the group: that takes an admin (or a champion).
    resp = ben.api("POST", f"/groups/{GROUP}/users", json={"users": [ben.name]})
    assert resp.status_code in (403, 404), resp.text
    resp = form_post(hub, ben, "viaform", {"machine": "gpu", "environment": "python"})
    assert resp.status_code == 400 and REFUSAL in html.unescape(resp.content.decode())
    for server in ("work", "made", "viaform"):
        assert ben.model(server, include_stopped=True) is None

    # In the group: the form offers it, with who it is for, and the server starts on it.
    set_member(admin, ben.name, True)
    page = form(hub, ben)
    assert machines_on(page) == ["small", "gpu"]
    assert "For groups: lab-a" in page
    resp = ben.start("work", {"machine": "gpu"})
    assert resp.status_code in (201, 202), resp.text
    ben.wait_ready("work")
    assert ben.model("work")["user_options"]["machine"] == "gpu"
    ben.stop("work")

    # Removed: the next start of the same server, with its saved options, is refused.
    set_member(admin, ben.name, False)
    resp = ben.api("POST", ben.server_path("work"))
    assert refused(resp), resp.text
    page = form(hub, ben)
    assert machines_on(page) == ["small"]
    assert f"{REFUSAL} It is not selected." in page  # its saved choice, said why


def test_admins_may_pick_every_machine(hub: Hub, admin: Session) -> None:
    assert machines_on(form(hub, admin)) == ["small", "gpu"]
