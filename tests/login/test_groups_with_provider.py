"""Hub-managed groups with a login provider that manages groups (a real LDAP directory):
JupyterHub makes a user's groups the provider's at every login, and the hub's login hook
adds back what the hub keeps (config members, champions, members added on the hub); the
provider cannot put anyone in those; a champion of a provider group sees its members and
cannot change them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import needs_root
from hubtest import Hub, Session, running_hub

from login.slapd import GROUPS, Slapd, running_slapd

pytestmark = [pytest.mark.e2e, needs_root]

PASSWORDS = {"pg-ada": "ada-pw-51e0", "pg-bob": "bob-pw-93d7", "pg-lea": "lea-pw-2b6c"}
DIRECTORY_GROUPS = {
    "physics": ["pg-ada", "pg-bob", "pg-lea"],
    # The directory claims hub-managed groups: it must not decide them.
    "lab": ["pg-ada"],
    "lab-champions": ["pg-ada"],
}
HUB_GROUPS = {
    "physics": {"source": "provider", "champions": ["pg-ada"]},
    "lab": {"members": ["pg-bob"]},
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    root = tmp_path_factory.mktemp("slapd") / "directory"
    with running_slapd(root, people=PASSWORDS, groups=DIRECTORY_GROUPS) as slapd:
        password_file = tmp_path_factory.mktemp("secrets") / "ldap-password"
        password_file.write_text(slapd.service_password + "\n")
        password_file.chmod(0o600)
        with running_hub(overrides(slapd, password_file)) as running:
            yield running


def overrides(slapd: Slapd, password_file: Path) -> dict:
    ldap = {
        **slapd.search_settings(password_file),
        "groups": {"search_base": GROUPS},
    }
    return {
        "auth": {"type": "ldap", "ldap": ldap},
        "hub": {"admin_users": ["pg-lea"]},
        "groups": HUB_GROUPS,
    }


def login(hub: Hub, name: str) -> Session:
    return hub.login(name, PASSWORDS[name])


def groups_of(admin: Session, name: str) -> list[str]:
    resp = admin.api("GET", f"/users/{name}")
    assert resp.status_code == 200, resp.text
    return sorted(resp.json()["groups"])


def test_logins_keep_hub_managed_groups(hub: Hub) -> None:
    admin = login(hub, "pg-lea")
    login(hub, "pg-bob")
    assert groups_of(admin, "pg-bob") == ["lab", "physics"], "the config's member stays"
    login(hub, "pg-ada")
    assert groups_of(admin, "pg-ada") == ["physics", "physics-champions"]

    # Members added on the hub stay across logins; the provider's groups follow it.
    assert admin.api("POST", "/groups/lab/users", json={"users": ["pg-ada"]}).ok
    ada = login(hub, "pg-ada")
    assert groups_of(admin, "pg-ada") == ["lab", "physics", "physics-champions"]

    # A champion of a provider group sees its members, and cannot change them.
    listed = ada.api("GET", "/users").json()
    assert {user["name"] for user in listed} == {"pg-ada", "pg-bob", "pg-lea"}
    resp = ada.api("DELETE", "/groups/physics/users", json={"users": ["pg-bob"]})
    assert resp.status_code == 403, resp.text
    assert hub.cli("group", "add-member", "physics", "pg-ada").returncode == 1
