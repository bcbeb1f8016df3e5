"""Refused requests leave nothing behind: no server entry, no storage, no renamed leftovers.

A user who sends options the hub refuses must not be able to fill their named-server
quota with stopped entries (nor get around the quota by renaming), and a rename must not
separate a server from the storage, cgroup and job names made for its name.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import needs_default_env, needs_root
from hubtest import Hub, Session, running_hub

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]

REFUSED = {"machine": "no-such-machine"}
REFUSAL = "Unknown machine type 'no-such-machine'"


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with running_hub({"policy": {"named_servers": {"max": 2}}}) as running:
        yield running


@pytest.fixture(scope="module")
def carol(hub: Hub) -> Session:
    return hub.new_user("carol")


def servers(session: Session) -> dict[str, Any]:
    """The user's named servers the hub knows, stopped ones included."""
    user = session.api("GET", f"/users/{session.name}?include_stopped_servers").json()
    return {name: server for name, server in user["servers"].items() if name}


def volumes_of(hub: Hub, session: Session) -> list[str]:
    """The names of the user's server volume images."""
    images = hub.data_dir / "storage/servers" / f"{hub.prefix}{session.name}"
    return sorted(p.stem for p in images.glob("*.img")) if images.is_dir() else []


def form_post(hub: Hub, session: Session, server: str, data: dict[str, Any]) -> Any:
    session.http.get(f"{hub.url}/hub/home", timeout=30)  # for the _xsrf cookie
    xsrf = session.http.cookies.get("_xsrf", path="/hub/")
    return session.http.post(
        f"{hub.url}/hub/spawn/{session.name}/{server}",
        data={**data, "_xsrf": xsrf},
        allow_redirects=False,
        timeout=60,
    )


def test_a_refused_api_spawn_leaves_no_server(hub: Hub, carol: Session) -> None:
    for name in ("first", "second", "third"):  # more refusals than the quota of two
        resp = carol.start(name, REFUSED)
        assert resp.status_code == 400, resp.text
        assert REFUSAL in resp.json()["message"]
        assert servers(carol) == {}, "a refused start leaves no server entry"
    resp = carol.api("PUT", "/users/carol/servers/put", json={"user_options": REFUSED})
    assert resp.status_code == 400 and REFUSAL in resp.json()["message"], resp.text
    assert servers(carol) == {}, "a refused create leaves no server entry"
    assert volumes_of(hub, carol) == []
    # The quota is untouched: both named servers can still be created.
    for name in ("one", "two"):
        assert carol.api("PUT", f"/users/carol/servers/{name}", json={}).status_code == 201
    for name in ("one", "two"):
        assert carol.api("DELETE", f"/users/carol/servers/{name}", json={"remove": True}).ok


def test_a_refused_form_spawn_leaves_no_server(hub: Hub, carol: Session) -> None:
    resp = form_post(hub, carol, "viaform", {"machine": "no-such-machine"})
    assert resp.status_code == 400, resp.text[-2000:]
    assert REFUSAL in html.unescape(resp.content.decode())
    resp = form_post(hub, carol, "viaform", {"machine": "small", "cpu": "64"})
    assert resp.status_code == 400
    assert "Unknown option 'cpu'" in html.unescape(resp.content.decode())
    resp = form_post(hub, carol, "viaform", {"machine": b"\xff"})
    assert resp.status_code == 400
    assert "not valid UTF-8 text" in resp.content.decode()
    assert servers(carol) == {}
    assert volumes_of(hub, carol) == []


def test_renaming_a_server_is_refused_and_changes_nothing(hub: Hub, carol: Session) -> None:
    assert carol.start("named").status_code in (201, 202)
    carol.wait_ready("named")
    carol.stop("named")
    assert volumes_of(hub, carol) == ["named"]
    before = servers(carol)

    resp = carol.api("PATCH", "/users/carol/servers/named", json={"name": "renamed"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["message"].startswith("Renaming servers is not supported;")
    assert servers(carol) == before
    assert volumes_of(hub, carol) == ["named"]
    # The server still starts under its name, with its volume.
    assert carol.start("named").status_code in (201, 202)
    carol.wait_ready("named")
    carol.stop("named", remove=True)
    assert servers(carol) == {}
