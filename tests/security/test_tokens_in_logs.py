"""Tokens sent to the hub never reach a log line, also when the request fails.

A real hub (JupyterHub, configurable-http-proxy, the binder service and a user's server)
gets requests that carry a canary token the way clients send tokens: in ``?token=``, in an
``Authorization`` header, on the hub's pages and API, the binder service's pages, ``/build``
and ``/v2`` URLs, and a user's server. They fail (403, 404, 400). Then everything the hub
wrote, to its output and to its log files, is searched for the canary.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import needs_default_env, needs_root
from hubtest import Hub, Session, running_hub, wait_for

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]

CANARY = f"secret-canary-{secrets.token_hex(8)}"
SERVICE = "/services/binder/"


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with running_hub() as running:
        yield running


@pytest.fixture(scope="module")
def alice(hub: Hub) -> Session:
    session = hub.new_user("alice")
    assert session.start().status_code in (201, 202)
    session.wait_ready()
    return session


def written_by_the_hub(hub: Hub) -> dict[Path, bytes]:
    """The hub's output and every file it wrote under its root, but volume images (which
    hold users' files, not the hub's)."""
    return {
        path: path.read_bytes()
        for path in hub.root.rglob("*")
        if path.is_file() and not path.is_symlink() and path.suffix not in (".img", ".sqlite")
    }


def test_no_token_reaches_a_log_line(hub: Hub, alice: Session) -> None:
    query = {"token": CANARY}
    header = {"Authorization": f"token {CANARY}"}
    bearer = {"Authorization": f"Bearer {CANARY}"}
    stream = {"Accept": "text/event-stream"}
    user = "/user/alice/"
    failing = [
        ("/hub/api/users", query, {}),
        ("/hub/api/users", {}, header),
        ("/hub/api/users/alice", {}, bearer),
        ("/hub/api/users/alice/tokens", {"token": CANARY, "other": "1"}, {}),
        ("/hub/home", query, {}),
        ("/hub/no-such-page", query, {}),
        ("/hub/spawn", query, header),
        (SERVICE, query, {}),
        (SERVICE, {}, header),
        (f"{SERVICE}build/gh/org/repo/main", query, stream),
        (f"{SERVICE}build/gh/org/repo/main", {}, {**header, **stream}),
        (f"{SERVICE}build/gh/org/repo/main", query, {}),
        (f"{SERVICE}build/nope/x", query, stream),
        (f"{SERVICE}v2/gh/org/repo/main", query, {}),
        (f"{SERVICE}environments", query, header),
        (f"{SERVICE}no-such-page", query, {}),
        (f"{user}api/status", query, {}),
        (f"{user}api/contents", {}, header),
        (f"{user}no-such-page", query, {}),
        ("/user/nobody-here/api/status", query, {}),
    ]
    for path, params, headers in failing:
        resp = requests.get(
            hub.url + path, params=params, headers=headers, allow_redirects=False, timeout=30
        )
        assert resp.status_code >= 300, f"{path} was expected to fail, got {resp.status_code}"

    # Each log writer has written everything before its line for this last request.
    marker = f"marker{secrets.token_hex(4)}"
    for path in (f"/hub/api/{marker}", f"{SERVICE}{marker}", f"{user}api/{marker}"):
        requests.get(hub.url + path, headers={"Authorization": f"token {alice.token}"}, timeout=30)
    wait_for(
        lambda: all(
            any(f"{where}{marker}".encode() in text for text in written_by_the_hub(hub).values())
            for where in ("/hub/api/", SERVICE, "/api/")
        ),
        30,
        "the marker requests in the hub's, the service's and the server's logs",
    )
    leaks = {
        str(path): [line for line in text.splitlines() if CANARY.encode() in line][:3]
        for path, text in written_by_the_hub(hub).items()
        if CANARY.encode() in text
    }
    assert leaks == {}, "the canary token is in these logs"
