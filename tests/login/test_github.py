"""Logins through GitHub, against FakeGitHub (GitHub cannot be reached from here).

A real hub with OAuthenticator's GitHub login, pointed at the stand-in as a GitHub
Enterprise server: members of an allowed organisation or team get in, others are refused
with a message, teams become hub groups and follow GitHub at each login.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import requests
from conftest import needs_root
from hubtest import Hub, hub_user, new_test_root, running_hub

from .fake_github import FakeGitHub, GitHubUser

pytestmark = [pytest.mark.e2e, needs_root]

CLIENT_ID = "hub-github-client"
SECRET = secrets.token_urlsafe(24)
GRACE = GitHubUser(
    "Grace-GH",
    orgs={"physics"},
    teams=[("physics", "theory", "Theory"), ("physics", "quantum-optics", "Quantum Optics")],
)
LINUS = GitHubUser("linus-gh", orgs={"chem"}, teams=[("chem", "lab-staff", "Lab staff")])
MALLORY = GitHubUser("mallory-gh", orgs={"other", "chem"}, teams=[("chem", "visitors", "V")])


@pytest.fixture(scope="module")
def github() -> Iterator[FakeGitHub]:
    fake = FakeGitHub(CLIENT_ID, SECRET, [GRACE, LINUS, MALLORY]).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def hub(github: FakeGitHub) -> Iterator[Hub]:
    root = new_test_root()
    secret_file = root / "github-secret"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)
    auth = {
        "type": "github",
        "github": {
            "url": github.url,
            "client_id": CLIENT_ID,
            "client_secret": {"file": str(secret_file)},
            "allowed_organizations": ["physics", "chem:lab-staff"],
            "mapping": {"physics:theory": "theorists"},
        },
    }
    with running_hub({"auth": auth, "hub": {"admin_users": ["grace-gh"]}}) as running:
        yield running


def login(hub: Hub, github: FakeGitHub, who: str) -> tuple[requests.Session, requests.Response]:
    """The OAuth round trip as a browser makes it, with ``who`` signed in at GitHub."""
    github.signed_in = who
    http = requests.Session()
    return http, http.get(f"{hub.url}/hub/oauth_login", timeout=60)


@pytest.fixture(scope="module")
def admin_token(hub: Hub, github: FakeGitHub) -> str:
    http, resp = login(hub, github, "Grace-GH")
    assert resp.status_code == 200, resp.text
    xsrf = http.cookies.get("_xsrf", path="/hub/")
    token = http.post(
        f"{hub.url}/hub/api/users/grace-gh/tokens",
        json={"note": "tests"},
        headers={"X-XSRFToken": xsrf},
        timeout=30,
    )
    assert token.status_code == 201, token.text
    return str(token.json()["token"])


def test_org_member_gets_in_with_teams_as_groups(
    hub: Hub, github: FakeGitHub, admin_token: str
) -> None:
    grace = hub_user(hub, admin_token, "grace-gh")
    assert grace is not None and grace["admin"]
    assert sorted(grace["groups"]) == ["physics-quantum-optics", "theorists"]

    # She leaves a team on GitHub: the group is gone at her next login.
    GRACE.teams = [("physics", "quantum-optics", "Quantum Optics")]
    _, resp = login(hub, github, "Grace-GH")
    assert resp.status_code == 200
    grace = hub_user(hub, admin_token, "grace-gh")
    assert grace is not None and grace["groups"] == ["physics-quantum-optics"]


def test_team_member_gets_in(hub: Hub, github: FakeGitHub, admin_token: str) -> None:
    _, resp = login(hub, github, "linus-gh")
    assert resp.status_code == 200, resp.text
    assert "/hub/spawn" in resp.url or "/hub/home" in resp.url
    linus = hub_user(hub, admin_token, "linus-gh")
    assert linus is not None and not linus["admin"]
    assert linus["groups"] == ["chem-lab-staff"]


def test_outsider_is_refused_with_a_message(hub: Hub, github: FakeGitHub, admin_token: str) -> None:
    # In chem, but not in its allowed team; in another organisation.
    _, resp = login(hub, github, "mallory-gh")
    assert resp.status_code == 403
    assert "not a member of an organisation or team this hub admits" in resp.text
    assert hub_user(hub, admin_token, "mallory-gh") is None


def test_secrets_are_not_logged(hub: Hub, github: FakeGitHub, admin_token: str) -> None:
    log = hub.log()
    assert "grace-gh" in log
    assert SECRET not in log
    assert github.tokens and not any(token in log for token in github.tokens)


def test_github_down_during_login_is_an_error_page(
    hub: Hub, github: FakeGitHub, admin_token: str
) -> None:
    """GitHub stops answering after sending someone back: a page saying so, and the hub
    goes on."""
    github.signed_in = "linus-gh"
    http = requests.Session()
    back = http.get(f"{hub.url}/hub/oauth_login", timeout=60, allow_redirects=False)
    authorize = requests.get(back.headers["Location"], allow_redirects=False, timeout=30)
    github.stop()
    resp = http.get(authorize.headers["Location"], timeout=60)
    assert resp.status_code == 503, resp.text
    assert "GitHub cannot be reached at the moment" in resp.text
    assert hub_user(hub, admin_token, "grace-gh") is not None
