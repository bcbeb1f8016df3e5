"""Logins against a real LDAP directory (slapd on loopback, StartTLS with its own CA):
the login form, groups kept in sync at every login, allowed groups, a directory that goes
away and comes back, and the search account's password kept out of sight."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import needs_root
from hubtest import Hub, Session, running_hub
from tornado import web
from traitlets.config import Config as TraitletsConfig

from hubstack.config.load import ConfigError, validate
from hubstack.config.safety import unsafe_settings
from hubstack.hub.ldap import (
    DIRECTORY_DOWN,
    NOT_ALLOWED,
    HubstackLDAPAuthenticator,
    configure_ldap,
)
from login.slapd import GROUPS, PEOPLE, Slapd, group_dn, running_slapd

PEOPLE_PASSWORDS = {
    "ldap-ada": "ada-pw-3f9e",
    "ldap-bob": "bob-pw-81c2",
    "ldap-eve": "eve-pw-0a4d",
    "ldap-lea": "lea-pw-c7b5",
}
DIRECTORY_GROUPS = {
    "hub-users": ["ldap-ada", "ldap-lea"],
    "physics": ["ldap-ada", "ldap-bob"],
    "Data Science Lab": ["ldap-ada", "ldap-lea"],
    "gpu": ["ldap-ada"],
    "visitors": ["ldap-eve"],
}


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    root = tmp_path_factory.mktemp("slapd") / "directory"
    people, groups = PEOPLE_PASSWORDS, DIRECTORY_GROUPS
    with running_slapd(root, people=people, groups=groups, posix_groups=("gpu",)) as running:
        yield running


def ldap_settings(slapd: Slapd, password_file: Path) -> dict[str, Any]:
    return {
        **slapd.search_settings(password_file),
        # One allowed group by DN, one by name.
        "allowed_groups": [group_dn("hub-users"), "physics"],
        "groups": {"search_base": GROUPS, "mapping": {"Data Science Lab": "datalab"}},
    }


@pytest.fixture(scope="module")
def password_file(slapd: Slapd, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "ldap-password"
    path.write_text(slapd.service_password + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def hub(slapd: Slapd, password_file: Path) -> Iterator[Hub]:
    overrides = {
        "auth": {"type": "ldap", "ldap": ldap_settings(slapd, password_file)},
        "hub": {"admin_users": ["ldap-lea"]},
    }
    with running_hub(overrides) as running:
        yield running


@pytest.fixture(scope="module")
def admin(hub: Hub) -> Session:
    return hub.login("ldap-lea", PEOPLE_PASSWORDS["ldap-lea"])


def hub_groups_of(admin: Session, name: str) -> list[str]:
    resp = admin.api("GET", f"/users/{name}")
    assert resp.status_code == 200, resp.text
    return sorted(resp.json()["groups"])


@needs_root
def test_member_logs_in_and_gets_their_directory_groups(hub: Hub, admin: Session) -> None:
    hub.login("ldap-ada", PEOPLE_PASSWORDS["ldap-ada"])
    # groupOfNames by member DN, posixGroup (gpu) by memberUid; a mapped name; all safe.
    assert hub_groups_of(admin, "ldap-ada") == ["datalab", "gpu", "hub-users", "physics"]


@needs_root
def test_allowed_group_given_by_name(hub: Hub, admin: Session) -> None:
    hub.login("ldap-bob", PEOPLE_PASSWORDS["ldap-bob"])
    assert hub_groups_of(admin, "ldap-bob") == ["physics"]


@needs_root
def test_person_outside_the_allowed_groups_is_refused(hub: Hub, admin: Session) -> None:
    _, resp = hub.post_login("ldap-eve", PEOPLE_PASSWORDS["ldap-eve"])
    assert resp.status_code == 403
    assert NOT_ALLOWED.split(".")[0] in resp.text
    assert admin.api("GET", "/users/ldap-eve").status_code == 404


@needs_root
@pytest.mark.parametrize(
    ("name", "password"),
    [("ldap-ada", "not-her-password"), ("ldap-nobody", "whatever"), ("ldap-ada*", "x")],
)
def test_wrong_password_or_unknown_name_is_the_usual_refusal(
    hub: Hub, name: str, password: str
) -> None:
    _, resp = hub.post_login(name, password)
    assert resp.status_code == 403
    assert "Invalid username or password" in resp.text


@needs_root
def test_leaving_a_directory_group_takes_effect_at_next_login(
    hub: Hub, admin: Session, slapd: Slapd
) -> None:
    hub.login("ldap-ada", PEOPLE_PASSWORDS["ldap-ada"])
    assert "datalab" in hub_groups_of(admin, "ldap-ada")
    slapd.remove_member("Data Science Lab", "ldap-ada")
    hub.login("ldap-ada", PEOPLE_PASSWORDS["ldap-ada"])
    assert hub_groups_of(admin, "ldap-ada") == ["gpu", "hub-users", "physics"]
    # Others in the group keep it.
    hub.login("ldap-lea", PEOPLE_PASSWORDS["ldap-lea"])
    assert "datalab" in hub_groups_of(admin, "ldap-lea")


@needs_root
def test_directory_down_gives_a_message_and_the_hub_keeps_serving(
    hub: Hub, admin: Session, slapd: Slapd
) -> None:
    slapd.stop()
    try:
        _, resp = hub.post_login("ldap-bob", PEOPLE_PASSWORDS["ldap-bob"])
        assert resp.status_code == 503
        assert DIRECTORY_DOWN in resp.text
        assert 'name="password"' in resp.text  # the login form, to try again
        # People already logged in are served.
        assert hub_groups_of(admin, "ldap-bob") == ["physics"]
    finally:
        slapd.start()
    hub.login("ldap-bob", PEOPLE_PASSWORDS["ldap-bob"])
    assert "cannot be used" in hub.log()  # the cause is logged for the operator


@needs_root
def test_search_password_is_never_shown(hub: Hub, slapd: Slapd) -> None:
    check = hub.cli("check")
    assert check.returncode == 0, check.stderr
    assert "search_bind_password" in check.stdout
    for text in (check.stdout, check.stderr, hub.log()):
        assert slapd.service_password not in text


@needs_root
def test_unreadable_search_password_stops_the_hub_naming_the_key(hub: Hub, tmp_path: Path) -> None:
    config = hub.config()
    missing = tmp_path / "no-such-password"
    config["auth"]["ldap"]["search_bind_password"] = {"file": str(missing)}
    config["hub"]["data_dir"] = str(tmp_path / "data")
    path = tmp_path / "hubstack.yaml"
    path.write_text(yaml.safe_dump(config))
    up = subprocess.run(
        [sys.executable, "-m", "hubstack.cli", "up", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert up.returncode != 0
    assert "auth.ldap.search_bind_password" in up.stderr
    assert str(missing) in up.stderr


def authenticator(settings: dict[str, Any], **traits: Any) -> HubstackLDAPAuthenticator:
    """The hub's authenticator as ``hubstack up`` configures it, without a hub around it."""
    c = TraitletsConfig()
    configure_ldap(c, validate({"auth": {"type": "ldap", "ldap": settings}}))
    for name, value in traits.items():
        setattr(c.HubstackLDAPAuthenticator, name, value)
    return HubstackLDAPAuthenticator(config=c)


def authenticate(auth: HubstackLDAPAuthenticator, name: str) -> dict[str, Any] | None:
    data = {"username": name, "password": PEOPLE_PASSWORDS[name]}
    return asyncio.run(auth.authenticate(None, data))  # type: ignore[arg-type]


TEMPLATE = {"bind_dn_template": [f"uid={{username}},{PEOPLE}"], "groups": {"search_base": GROUPS}}


def test_ldaps_with_a_bind_template(slapd: Slapd) -> None:
    auth = authenticator({"server": slapd.ssl_uri, "ca_file": str(slapd.ca_file), **TEMPLATE})
    model = authenticate(auth, "ldap-bob")
    assert model is not None
    assert (model["name"], model["groups"]) == ("ldap-bob", ["physics"])


def test_guessing_passwords_through_the_hub_is_limited(slapd: Slapd) -> None:
    settings = {"server": slapd.ssl_uri, "ca_file": str(slapd.ca_file), **TEMPLATE}
    auth = authenticator(settings, failed_logins_per_account=2)
    for _ in range(2):
        guess = {"username": "ldap-bob", "password": "guess"}
        assert asyncio.run(auth.authenticate(None, guess)) is None  # type: ignore[arg-type]
    with pytest.raises(web.HTTPError) as refused:
        authenticate(auth, "ldap-bob")
    assert refused.value.status_code == 429
    assert "Too many failed logins for this account" in str(refused.value.log_message)
    assert authenticate(auth, "ldap-ada") is not None, "other accounts log in"


@pytest.mark.parametrize(
    ("server", "trusted"),
    [
        # Without ca_file the system's CAs decide, and they do not know the test CA.
        ("{uri}", False),
        ("{ssl_uri}", False),
        # The certificate is for 127.0.0.1, not for localhost.
        ("ldaps://localhost:{ssl_port}", True),
    ],
)
def test_a_certificate_not_for_this_directory_is_refused(
    slapd: Slapd, server: str, trusted: bool
) -> None:
    server = server.format(uri=slapd.uri, ssl_uri=slapd.ssl_uri, ssl_port=slapd.ssl_port)
    settings = {"server": server, **TEMPLATE} | ({"ca_file": str(slapd.ca_file)} if trusted else {})
    with pytest.raises(web.HTTPError) as refused:
        authenticate(authenticator(settings), "ldap-bob")
    assert (refused.value.status_code, refused.value.log_message) == (503, DIRECTORY_DOWN)


def test_a_search_account_the_directory_refuses_gives_the_message(
    slapd: Slapd, tmp_path: Path
) -> None:
    """The hub's own account failing is not the person's wrong password."""
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-service-password")
    auth = authenticator(ldap_settings(slapd, wrong))
    with pytest.raises(web.HTTPError) as refused:
        authenticate(auth, "ldap-bob")
    assert (refused.value.status_code, refused.value.log_message) == (503, DIRECTORY_DOWN)


def test_a_directory_that_never_answers_gives_the_message(slapd: Slapd) -> None:
    """A server that takes the connection and says nothing: the login is not held up
    longer than directory_timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        server = f"ldap://127.0.0.1:{silent.getsockname()[1]}"
        auth = authenticator({"server": server, **TEMPLATE}, directory_timeout=1.0)
        with pytest.raises(web.HTTPError) as refused:
            authenticate(auth, "ldap-bob")
    assert (refused.value.status_code, refused.value.log_message) == (503, DIRECTORY_DOWN)


BASE = {"server": "ldap://dir.example.org", "user_search_base": "ou=people,dc=example,dc=org"}


@pytest.mark.parametrize(
    ("changes", "key", "says"),
    [
        ({"server": "http://dir.example.org"}, "auth.ldap.server", "ldaps://host"),
        ({"server": "ldap://dir.example.org:ten"}, "auth.ldap.server", "bad port"),
        ({"server": "ldap://dir/o=x"}, "auth.ldap.server", "more than a host"),
        ({"server": "ldaps://dir", "tls": "starttls"}, "auth.ldap.tls", "must be ssl"),
        ({"server": "ldap://dir:389", "port": 636}, "auth.ldap.port", "differs"),
        ({"tls": "none", "ca_file": "/etc/ca.pem"}, "auth.ldap.ca_file", "tls is none"),
        ({"ca_file": "ca.pem"}, "auth.ldap.ca_file", "absolute"),
        (
            {"bind_dn_template": ["uid={username},dc=example"]},
            "auth.ldap.user_search_base",
            "either bind_dn_template or a search",
        ),
        ({"user_search_base": None}, "auth.ldap", "either bind_dn_template"),
        ({"user_search_base": "people"}, "auth.ldap.user_search_base", "distinguished name"),
        ({"search_bind_dn": "cn=hub,dc=example"}, "auth.ldap.search_bind_password", "both"),
        ({"search_bind_password": {"file": "/p"}}, "auth.ldap.search_bind_dn", "both"),
        ({"search_bind_password": {"file": "p"}}, "search_bind_password.file", "absolute"),
        ({"allowed_groups": ["staff"]}, "auth.ldap.allowed_groups", "groups.search_base"),
        (
            {
                "allowed_groups": ["cn=staff,ou=other,dc=example,dc=org"],
                "groups": {"search_base": "ou=groups,dc=example,dc=org"},
            },
            "auth.ldap.allowed_groups[0]",
            "not under groups.search_base",
        ),
        (
            # YAML's [cn=staff,ou=groups,...] is a list of parts of a DN.
            {"allowed_groups": ["cn=staff", "ou=groups"], "groups": {"search_base": "dc=org"}},
            "auth.ldap.allowed_groups[0]",
            "quote DNs",
        ),
        (
            {"groups": {"search_base": "ou=groups,dc=x", "mapping": {"Lab": "Not Safe"}}},
            "auth.ldap.groups.mapping.Lab",
            "lowercase",
        ),
    ],
)
def test_bad_settings_name_the_key_and_what_is_allowed(
    changes: dict[str, Any], key: str, says: str
) -> None:
    settings = {k: v for k, v in {**BASE, **changes}.items() if v is not None}
    with pytest.raises(ConfigError) as error:
        validate({"auth": {"type": "ldap", "ldap": settings}})
    problems = "\n".join(error.value.problems)
    assert key in problems and says in problems, problems


def test_bind_template_with_a_field_other_than_username_is_refused() -> None:
    settings = {"server": "dir", "bind_dn_template": ["uid={user},dc=example"]}
    with pytest.raises(ConfigError) as error:
        validate({"auth": {"type": "ldap", "ldap": settings}})
    assert "must contain {username}" in str(error.value)


@pytest.mark.parametrize(
    ("server", "tls", "host", "port", "mode"),
    [
        ("ldaps://dir.example.org", None, "dir.example.org", 636, "ssl"),
        ("ldap://dir.example.org", None, "dir.example.org", 389, "starttls"),
        ("dir.example.org", "ssl", "dir.example.org", 636, "ssl"),
        ("ldap://127.0.0.1:3389", "none", "127.0.0.1", 3389, "none"),
    ],
)
def test_server_address_and_tls(
    server: str, tls: str | None, host: str, port: int, mode: str
) -> None:
    settings = {**BASE, "server": server} | ({"tls": tls} if tls else {})
    ldap = validate({"auth": {"type": "ldap", "ldap": settings}}).auth.ldap
    assert ldap is not None
    assert (ldap.host, ldap.port_number, ldap.tls_mode) == (host, port, mode)


@pytest.mark.parametrize(("tls", "warned"), [("none", True), ("starttls", False)])
def test_check_warns_when_passwords_would_cross_the_network_in_clear(
    tls: str, warned: bool
) -> None:
    config = validate({"auth": {"type": "ldap", "ldap": {**BASE, "tls": tls}}})
    warnings = [w for w in unsafe_settings(config) if w.startswith("auth.ldap.tls")]
    assert bool(warnings) == warned
