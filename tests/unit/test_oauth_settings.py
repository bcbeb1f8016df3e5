"""The ``auth.github``, ``auth.oidc`` and ``auth.azuread`` sections: what a bad value says,
how each becomes OAuthenticator's config, and how provider groups become hub groups."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from tornado import web
from tornado.httpclient import HTTPClientError

from hubstack.config import ConfigError
from hubstack.config.load import validate
from hubstack.config.safety import unsafe_settings
from hubstack.hub.oauth import HubstackAzureAdAuthenticator, HubstackOidcAuthenticator
from hubstack.hub.settings import jupyterhub_config

URLS = {
    "authorize_url": "https://login.example.org/authorize",
    "token_url": "https://login.example.org/token",
    "userinfo_url": "https://login.example.org/userinfo",
}


def config_of(auth_type: str, section: dict[str, Any], secret: Path) -> Any:
    section = {"client_id": "hub", "client_secret": {"file": str(secret)}, **section}
    return validate({"auth": {"type": auth_type, auth_type: section}})


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text("s3cret\n")
    return path


@pytest.mark.parametrize(
    ("auth_type", "section", "key", "fragment"),
    [
        ("github", {}, "auth.github.allowed_organizations", "required"),
        ("github", {"allowed_organizations": []}, "auth.github.allowed_organizations", "1 item"),
        ("github", {"allowed_organizations": ["a b"]}, "allowed_organizations[0]", "pattern"),
        (
            "github",
            {"allowed_organizations": ["org"], "url": "github.example.org"},
            "auth.github.url",
            "use an http or https URL",
        ),
        ("oidc", {**URLS, "mapping": {"Lab": "Lab Folk"}}, "auth.oidc.mapping.Lab", "lowercase"),
        ("oidc", {"token_url": URLS["token_url"]}, "auth.oidc.authorize_url", "required"),
        ("azuread", {}, "auth.azuread.tenant_id", "required"),
        ("azuread", {"tenant_id": "a/b"}, "auth.azuread.tenant_id", "pattern"),
    ],
)
def test_bad_sections_name_the_key(
    secret: Path, auth_type: str, section: dict[str, Any], key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as error:
        config_of(auth_type, section, secret)
    message = str(error.value)
    assert key in message and fragment in message, message


def test_oidc_becomes_generic_oauthenticator(secret: Path, tmp_path: Path) -> None:
    section = {
        **URLS,
        "allowed_groups": ["Lab Members", "physics"],
        "admin_groups": ["Hub Admins"],
        "mapping": {"Lab Members": "lab"},
        "display": "Example University",
    }
    config = config_of("oidc", section, secret)
    config.hub.data_dir = tmp_path / "data"
    c = jupyterhub_config(config)
    assert c.JupyterHub.authenticator_class == "hubstack.hub.oauth.HubstackOidcAuthenticator"
    assert c.OAuthenticator.client_secret == "s3cret"
    assert c.Authenticator.manage_groups is True
    assert c.OAuthenticator.allowed_groups == {"lab", "physics"}
    assert c.OAuthenticator.admin_groups == {"hub-admins"}
    assert c.OAuthenticator.allow_all is False
    authenticator = HubstackOidcAuthenticator(config=c)
    assert authenticator.login_service == "Example University"
    assert authenticator.userdata_url == URLS["userinfo_url"]


def test_azuread_preset_has_azure_defaults(secret: Path, tmp_path: Path) -> None:
    config = config_of("azuread", {"tenant_id": "contoso.onmicrosoft.com"}, secret)
    config.hub.data_dir = tmp_path / "data"
    authenticator = HubstackAzureAdAuthenticator(config=jupyterhub_config(config))
    tenant = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0"
    assert authenticator.authorize_url == f"{tenant}/authorize"
    assert authenticator.token_url == f"{tenant}/token"
    assert authenticator.username_claim == "preferred_username"
    assert authenticator.groups_claim == "groups"
    assert authenticator.allow_all  # no allowed groups: anyone in the tenant


def _oidc(**traits: Any) -> HubstackOidcAuthenticator:
    return HubstackOidcAuthenticator(manage_groups=True, **traits)


def test_claim_groups_become_safe_hub_groups() -> None:
    authenticator = _oidc(group_mapping={"Lab Members": "lab"})
    state = {"oauth_user": {"groups": ["Lab Members", "Optics/Lasers", "!!!", 7]}}
    assert authenticator.get_user_groups(state) == {"lab", "optics-lasers"}
    assert authenticator.get_user_groups({"oauth_user": {"groups": "Physics"}}) == {"physics"}
    assert authenticator.get_user_groups({"oauth_user": {}}) == set()


def test_missing_claims_are_refusals_that_name_the_claim() -> None:
    authenticator = _oidc(allowed_groups={"lab"}, username_claim="preferred_username")
    with pytest.raises(web.HTTPError) as error:
        authenticator.get_user_groups({"oauth_user": {"preferred_username": "ada"}})
    assert error.value.status_code == 403 and "'groups' claim" in str(error.value.log_message)
    with pytest.raises(web.HTTPError) as error:
        authenticator.user_info_to_username({"name": "Ada"})
    assert error.value.status_code == 403
    assert "'preferred_username' claim" in str(error.value.log_message)
    assert authenticator.user_info_to_username({"preferred_username": " Ada "}) == "Ada"


@pytest.mark.parametrize(
    ("failure", "status", "fragment"),
    [
        (ConnectionRefusedError(111, "Connection refused"), 503, "cannot be reached"),
        (HTTPClientError(599, "Timeout"), 503, "cannot be reached"),
        (HTTPClientError(400, "Bad Request"), 502, "refused to complete the login (HTTP 400)"),
    ],
)
def test_provider_failures_are_error_pages(
    failure: Exception, status: int, fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def fail(*args: Any, **kwargs: Any) -> None:
        raise failure

    authenticator = _oidc(token_url="https://login.example.org/token")
    monkeypatch.setattr(authenticator, "get_token_info", fail)
    monkeypatch.setattr(authenticator, "build_access_tokens_request_params", lambda *a: {})
    with pytest.raises(web.HTTPError) as error:
        asyncio.run(authenticator.authenticate(None))
    assert error.value.status_code == status
    assert fragment in str(error.value.log_message)


def test_check_warns_about_plain_http_endpoints(secret: Path) -> None:
    plain = {**URLS, "token_url": "http://login.example.org/token"}
    warnings = unsafe_settings(config_of("oidc", plain, secret))
    assert any(w.startswith("auth.oidc.token_url is plain http") for w in warnings), warnings
    loopback = {**URLS, "userinfo_url": "http://127.0.0.1:9000/userinfo"}
    assert not any("plain http" in w for w in unsafe_settings(config_of("oidc", loopback, secret)))
    github = config_of("github", {"allowed_organizations": ["o"], "url": "http://ghe.lan"}, secret)
    assert any(w.startswith("auth.github.url is plain http") for w in unsafe_settings(github))


def test_check_warns_about_the_default_admin_name_with_a_provider(secret: Path) -> None:
    config = config_of("oidc", URLS, secret)
    assert any(w.startswith("hub.admin_users names 'admin'") for w in unsafe_settings(config))
    config.hub.admin_users = ["ada@example.org"]
    assert not any("admin_users" in w for w in unsafe_settings(config))


@pytest.mark.parametrize("auth_type", ["github", "oidc", "ldap"])
def test_a_secret_written_in_the_config_is_refused_without_repeating_it(auth_type: str) -> None:
    key = "search_bind_password" if auth_type == "ldap" else "client_secret"
    section = {"client_id": "hub", **URLS} if auth_type == "oidc" else {}
    if auth_type == "ldap":
        section = {"server": "ldap://127.0.0.1", "bind_dn_template": ["uid={username},dc=x"]}
    section[key] = "inline-Secret-4242"
    with pytest.raises(ConfigError) as error:
        validate({"auth": {"type": auth_type, auth_type: section}})
    text = str(error.value)
    assert f"auth.{auth_type}.{key}: a secret is not written in the config" in text
    assert "{file:" in text
    assert "inline-Secret-4242" not in text
