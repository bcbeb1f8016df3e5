"""Groups in the config and in JupyterHub: reserved names, who manages members, the
champion role's scopes, the login hook's groups, invitations' limits and records."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from jupyterhub import orm

from hubstack.config import ConfigError
from hubstack.config.load import validate
from hubstack.hub import invitations
from hubstack.hub.groups import (
    champion_scopes,
    hub_managed_groups,
    login_groups,
    sync_groups,
)
from hubstack.hub.provider_groups import hub_groups
from hubstack.hub.settings import jupyterhub_config
from hubstack.hub.tables import create_tables, utcnow

GROUPS = {
    "lab": {"champions": ["chris"], "members": ["mia", "max"]},
    "staff": {"source": "provider", "champions": ["pat"]},
}


def problems(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate(data)
    return str(info.value)


def test_champions_suffix_is_reserved_and_names_are_safe() -> None:
    message = problems({"groups": {"lab-champions": {}}})
    assert "lab-champions" in message and "reserved" in message
    message = problems({"groups": {"Lab 1": {}}})
    assert "Lab 1" in message
    assert hub_groups(["lab-champions", "lab"], {}) == ["lab"], "a provider makes no champion"


def test_provider_groups_take_no_members_from_the_file() -> None:
    message = problems({"groups": {"staff": {"source": "provider", "members": ["a"]}}})
    assert "groups.staff.members" in message and "provider" in message
    assert validate({"groups": GROUPS}).groups["lab"].source == "hub"


def test_champion_scopes_are_filtered_to_the_group() -> None:
    config = validate({"groups": GROUPS})
    lab = champion_scopes("lab", config.groups["lab"])
    assert "admin-ui" in lab and "groups!group=lab" in lab and "servers!group=lab" in lab
    assert all(scope == "admin-ui" or scope.endswith("!group=lab") for scope in lab)
    assert not any(scope.startswith("access:") for scope in lab), "not into members' servers"
    staff = champion_scopes("staff", config.groups["staff"])
    assert "groups!group=staff" not in staff, "the provider keeps a provider group's members"


def test_jupyterhub_gets_champion_roles_handlers_and_the_cli_service() -> None:
    config = validate({"groups": GROUPS})
    c = jupyterhub_config(config)
    roles = {role["name"]: role for role in c.JupyterHub.load_roles}
    assert roles["lab-champion"]["groups"] == ["lab-champions"]
    assert roles["hubstack-cli"]["services"] == ["hubstack-cli"]
    assert {"name": "hubstack-cli"} in c.JupyterHub.services
    routes = [handler[0] for handler in c.JupyterHub.extra_handlers]
    assert "/invite" in routes and "/api/groups/([^/]+)/invitations" in routes
    assert "post_auth_hook" not in c.Authenticator, "native accounts: no provider groups"


def test_login_keeps_hub_managed_groups_and_ignores_the_provider_for_them() -> None:
    managed = hub_managed_groups(validate({"groups": GROUPS}))
    assert managed == {"lab", "lab-champions", "staff-champions"}
    provider = ["staff", "lab", "lab-champions", "physics"]
    current = ["lab", "staff-champions", "old-provider-group"]
    assert login_groups(provider, current, managed) == [
        "staff",
        "physics",
        "lab",
        "staff-champions",
    ]


def test_config_groups_and_members_are_in_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.sqlite'}"
    config = validate({"groups": GROUPS})
    sync_groups(url, config)
    sync_groups(url, config)  # a restart adds nothing twice
    db = orm.new_session_factory(url)()
    assert members(db) == {
        "lab": ["max", "mia"],
        "lab-champions": ["chris"],
        "staff": [],
        "staff-champions": ["pat"],
    }
    # Someone added at run time stays; someone taken out of the file leaves.
    lab_champions = orm.Group.find(db, "lab-champions")
    lab_champions.users.append(orm.User(name="carl"))
    db.commit()
    sync_groups(url, validate({"groups": {"lab": {"members": ["mia"]}}}))
    db.expire_all()
    assert members(db)["lab"] == ["mia"] and members(db)["lab-champions"] == ["carl"]


def members(db) -> dict[str, list[str]]:
    return {g.name: sorted(u.name for u in g.users) for g in db.query(orm.Group)}


@pytest.mark.parametrize(
    ("expires_in", "uses", "error"),
    [
        ("1y", 1, "expires_in"),
        ("30s", 1, "between 1m"),
        ("soon", 1, "expires_in"),
        ("2h", 0, "between 1 and"),
        ("2h", "many", "whole number"),
        ("2h", 10**6, "between 1 and"),
    ],
)
def test_invitation_limits_are_refused_with_a_message(expires_in, uses, error) -> None:
    with pytest.raises(ValueError, match=error):
        invitations.parse_request(expires_in, uses)


def test_invitation_defaults() -> None:
    assert invitations.parse_request(None, "") == (7 * 86400, 1)
    assert invitations.parse_request("3d", "30") == (3 * 86400, 30)


def test_invitations_are_stored_hashed_and_used_up(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.sqlite'}"
    create_tables(url)
    db = orm.new_session_factory(url)()
    code, invitation = invitations.create(db, "lab", "chris", 3600, 2)
    assert code not in invitation.code_hash and len(code) >= 32
    assert invitations.find(db, code) is invitation
    assert invitations.find(db, code + "x") is None and invitations.find(db, "") is None
    now = utcnow()
    assert invitation.refusal(now) is None
    assert invitations.take_use(db, invitation) and invitations.take_use(db, invitation)
    assert not invitations.take_use(db, invitation), "two uses only"
    db.commit()
    db.refresh(invitation)
    assert "used up" in (invitation.refusal(now) or "")
    _, later = invitations.create(db, "lab", "chris", 60, 5)
    assert "expired" in (later.refusal(now + timedelta(seconds=61)) or "")
