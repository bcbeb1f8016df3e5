"""Logins through OpenID Connect and the Azure AD preset, against a real provider.

The provider is the ``oidc-provider`` package from npm (``oidc_provider.mjs``) on loopback,
with a test client and accounts whose claims carry groups. Each login is the whole round
trip in headless Chromium through the hub's proxy: the hub's login page, the provider's
login and consent pages, the hub's callback. Group memberships are checked through the hub's
REST API as an admin (who is an admin by a provider group).
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import requests
import yaml
from browser.chromium import chromium, needs_chromium
from conftest import needs_root
from hubtest import Hub, free_port_block, hub_user, new_test_root, running_hub, wait_for
from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.e2e, pytest.mark.browser, needs_root, needs_chromium]

NODE_MODULES = Path("/opt/hubstack/test-node/node_modules")
needs_provider = pytest.mark.skipif(
    not (NODE_MODULES / "oidc-provider").exists(),
    reason="run scripts/setup.sh --test first: oidc-provider is missing",
)
TENANT = "hubstack-tenant"
ADA = "ada.oidc@example.org"  # as the hub names her: the claim, lowercased

ACCOUNTS: dict[str, dict[str, Any]] = {
    # "!!!" cannot be a hub group name: it is left out, with a log line.
    "ada": {"preferred_username": "Ada.OIDC@Example.org", "groups": ["Lab Members", "!!!"]},
    "boss": {"preferred_username": "oidc-boss", "groups": ["Hub Admins"]},
    "eve": {"preferred_username": "oidc-eve", "groups": ["Visitors"]},
    "nameless": {"name": "No Username", "groups": ["Lab Members"]},
}


@dataclass
class Provider:
    """The running oidc-provider process and the accounts it knows."""

    port: int
    accounts_file: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def endpoint(self, name: str) -> str:
        return f"{self.url}/{TENANT}/oauth2/v2.0/{name}"

    def set_accounts(self, accounts: dict[str, dict[str, Any]]) -> None:
        self.accounts_file.write_text(json.dumps(accounts))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


@dataclass
class Setup:
    """What the module shares: the provider, the client secret and the hubs' ports."""

    root: Path
    provider: Provider
    secret: str
    secret_file: Path
    oidc_port: int
    azure_port: int


def _callback(port: int) -> str:
    return f"http://127.0.0.1:{port}/hub/oauth_callback"


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    root = new_test_root()
    secret = secrets.token_urlsafe(24)
    secret_file = root / "client-secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    oidc_port, azure_port = free_port_block(), free_port_block()
    provider_port = free_port_block(1)
    accounts_file = root / "accounts.json"
    accounts_file.write_text(json.dumps(ACCOUNTS))
    settings = {
        "port": provider_port,
        "tenant": TENANT,
        "accounts_file": str(accounts_file),
        "clients": [
            {"client_id": client_id, "client_secret": secret, "redirect_uris": [_callback(port)]}
            for client_id, port in (("hub-oidc", oidc_port), ("hub-azure", azure_port))
        ],
    }
    (root / "provider.json").write_text(json.dumps(settings))
    log = (root / "provider.log").open("ab")
    proc = subprocess.Popen(
        ["node", str(Path(__file__).with_name("oidc_provider.mjs")), str(root / "provider.json")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    provider = Provider(provider_port, accounts_file, proc)
    try:
        wait_for(
            lambda: requests.get(f"{provider.url}/.well-known/openid-configuration", timeout=5).ok,
            60,
            "the OpenID Connect provider",
        )
        yield Setup(root, provider, secret, secret_file, oidc_port, azure_port)
    finally:
        provider.stop()


def oidc_auth(setup: Setup) -> dict[str, Any]:
    provider = setup.provider
    return {
        "type": "oidc",
        "oidc": {
            "client_id": "hub-oidc",
            "client_secret": {"file": str(setup.secret_file)},
            "authorize_url": provider.endpoint("authorize"),
            "token_url": provider.endpoint("token"),
            "userinfo_url": f"{provider.url}/oidc/userinfo",
            # Written as the provider names them and as the hub does.
            "allowed_groups": ["Lab Members", "chemistry"],
            "admin_groups": ["Hub Admins"],
            "mapping": {"Lab Members": "lab"},
        },
    }


@pytest.fixture(scope="module")
def hub(setup: Setup) -> Iterator[Hub]:
    with running_hub({"auth": oidc_auth(setup)}, port=setup.oidc_port) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def provider_login(browser: Browser, hub: Hub, login: str) -> Page:
    """Log in as ``login`` from the hub's login page, in a fresh browser profile; the page
    where the hub's callback leaves the browser."""
    page = browser.new_context(viewport={"width": 1100, "height": 800}).new_page()
    page.goto(f"{hub.url}/hub/login")
    page.get_by_role("button", name=re.compile("Sign in with")).or_(
        page.get_by_role("link", name=re.compile("Sign in with"))
    ).click()
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", "any password")
    page.get_by_role("button", name="Sign-in").click()
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(re.compile(re.escape(hub.url) + "/hub/(?!oauth_login).*"))
    page.wait_for_load_state()
    return page


@pytest.fixture(scope="module")
def admin_token(hub: Hub, browser: Browser) -> str:
    """An API token of an admin, who is one by the provider group ``Hub Admins``."""
    page = provider_login(browser, hub, "boss")
    xsrf = next(c["value"] for c in page.context.cookies() if c["name"] == "_xsrf")
    resp = page.context.request.post(
        f"{hub.url}/hub/api/users/oidc-boss/tokens",
        data={"note": "tests"},
        headers={"X-XSRFToken": xsrf},
    )
    assert resp.status == 201, resp.text()
    token = str(resp.json()["token"])
    page.context.close()
    return token


@needs_provider
def test_member_logs_in_and_groups_follow_the_provider(
    setup: Setup, hub: Hub, browser: Browser, admin_token: str
) -> None:
    page = provider_login(browser, hub, "ada")
    assert "/hub/spawn" in page.url or "/hub/home" in page.url, page.url
    page.context.close()

    admin = hub_user(hub, admin_token, "oidc-boss")
    assert admin is not None and admin["admin"] and admin["groups"] == ["hub-admins"]
    ada = hub_user(hub, admin_token, ADA)
    assert ada is not None and not ada["admin"]
    assert ada["groups"] == ["lab"]
    assert "Login provider group '!!!' is not usable as a hub group name" in hub.log()

    # At the provider, Ada leaves the lab for chemistry: her next login says so.
    setup.provider.set_accounts(
        {**ACCOUNTS, "ada": {**ACCOUNTS["ada"], "groups": ["Chemistry", "Optics/Lasers"]}}
    )
    provider_login(browser, hub, "ada").context.close()
    ada = hub_user(hub, admin_token, ADA)
    assert ada is not None and sorted(ada["groups"]) == ["chemistry", "optics-lasers"]

    # Out of every allowed group: refused at the next login.
    setup.provider.set_accounts({**ACCOUNTS, "ada": {**ACCOUNTS["ada"], "groups": []}})
    page = provider_login(browser, hub, "ada")
    assert "not in a group this hub admits" in page.content()
    page.context.close()
    setup.provider.set_accounts(ACCOUNTS)


@needs_provider
def test_someone_outside_the_allowed_groups_is_refused(
    hub: Hub, browser: Browser, admin_token: str
) -> None:
    page = provider_login(browser, hub, "eve")
    assert "403" in page.content()
    assert "not in a group this hub admits" in page.content()
    page.context.close()
    assert hub_user(hub, admin_token, "oidc-eve") is None


@needs_provider
def test_a_missing_username_claim_is_a_clear_refusal(
    hub: Hub, browser: Browser, admin_token: str
) -> None:
    page = provider_login(browser, hub, "nameless")
    text = page.content()
    assert "did not send your user name (the 'preferred_username' claim)" in text, text
    page.context.close()
    assert requests.get(f"{hub.url}/hub/api/", timeout=30).ok


@needs_provider
def test_logins_at_the_provider_and_refusals_are_audited(hub: Hub) -> None:
    """After the logins above: each one through the provider is in the audit log with the
    hub's name for the person, a refused one too (who, unknown; from where)."""
    entries = [json.loads(line) for line in hub.cli("audit").stdout.splitlines()]
    logins = {(e["action"], e["actor"], e["source"]) for e in entries if "login" in e["action"]}
    assert ("login", ADA, "127.0.0.1") in logins
    assert ("login-failed", "anonymous", "127.0.0.1") in logins


@needs_provider
def test_the_client_secret_is_not_logged(setup: Setup, hub: Hub, admin_token: str) -> None:
    assert "oidc-boss" in hub.log()  # logins happened and were logged
    assert setup.secret not in hub.log()


@needs_provider
def test_azure_ad_preset(setup: Setup, browser: Browser) -> None:
    """The Azure AD preset takes its endpoints from authority and tenant, and its claims
    (preferred_username, groups) from the ID token."""
    auth = {
        "type": "azuread",
        "azuread": {
            "tenant_id": TENANT,
            "authority": setup.provider.url,
            "client_id": "hub-azure",
            "client_secret": {"file": str(setup.secret_file)},
            "allowed_groups": ["lab"],
            "mapping": {"Lab Members": "lab"},
        },
    }
    with running_hub({"auth": auth}, port=setup.azure_port) as azure:
        page = provider_login(browser, azure, "ada")
        assert "/hub/spawn" in page.url or "/hub/home" in page.url, page.url
        xsrf = next(c["value"] for c in page.context.cookies() if c["name"] == "_xsrf")
        me = page.context.request.get(f"{azure.url}/hub/api/user", headers={"X-XSRFToken": xsrf})
        assert me.status == 200, me.text()
        assert me.json()["name"] == ADA
        assert me.json()["groups"] == ["lab"]
        page.context.close()

        page = provider_login(browser, azure, "eve")
        assert "not in a group this hub admits" in page.content()
        page.context.close()


@needs_provider
def test_provider_down_during_login_is_an_error_page(setup: Setup, hub: Hub) -> None:
    """The provider goes away between sending someone to it and the hub's call to its
    token endpoint: the person gets a page saying so; the hub goes on."""
    http = requests.Session()
    start = http.get(f"{hub.url}/hub/oauth_login", allow_redirects=False, timeout=30)
    assert start.status_code == 302
    state = re.search(r"[?&]state=([^&]+)", start.headers["Location"])
    assert state is not None
    setup.provider.stop()
    callback = http.get(
        f"{hub.url}/hub/oauth_callback",
        params={"code": "a-code", "state": unquote(state.group(1))},
        timeout=60,
    )
    assert callback.status_code == 503, callback.text
    assert "cannot be reached at the moment" in callback.text
    assert requests.get(f"{hub.url}/hub/api/", timeout=30).ok


def _cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hubstack.cli", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=config.parent,
    )


def test_missing_secret_file_names_key_and_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    auth = {
        "type": "oidc",
        "oidc": {
            "client_id": "hub",
            "client_secret": {"file": str(secret)},
            "authorize_url": "https://login.example.org/authorize",
            "token_url": "https://login.example.org/token",
            "userinfo_url": "https://login.example.org/userinfo",
        },
    }
    config = tmp_path / "hubstack.yaml"
    config.write_text(yaml.safe_dump({"auth": auth, "hub": {"data_dir": str(tmp_path / "d")}}))
    for command in ("check", "up"):
        result = _cli(command, config=config)
        assert result.returncode != 0, (command, result.stderr)
        assert "auth.oidc.client_secret" in result.stderr, result.stderr
        assert str(secret) in result.stderr
    assert not (tmp_path / "d").exists()  # `up` stopped before doing anything

    secret.write_text("the-client-secret-value\n")
    result = _cli("check", config=config)
    assert result.returncode == 0, result.stderr
    assert "the-client-secret-value" not in result.stdout + result.stderr


def test_unknown_auth_type_names_the_allowed_ones(tmp_path: Path) -> None:
    config = tmp_path / "hubstack.yaml"
    config.write_text(yaml.safe_dump({"auth": {"type": "facebook"}}))
    result = _cli("check", config=config)
    assert result.returncode == 2
    assert "auth.type" in result.stderr and "'facebook'" in result.stderr
    for allowed in ("github", "oidc", "azuread", "ldap"):
        assert allowed in result.stderr
