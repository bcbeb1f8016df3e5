"""The home page in a real browser: log in, start a named server from it, read its card
(machine type, volume usage), the home's usage and the person's groups, stop the server and
delete it through the confirmation that says its volume goes too.

Drives Debian's Chromium through Playwright against a real ``hubstack up`` hub as root, so
the volumes are real loop-mounted images. Screenshots go to ``artifacts/browser/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from chromium import ARTIFACTS, needs_chromium
from conftest import needs_default_env, needs_root
from hubtest import Hub, running_hub, wait_for
from playwright.sync_api import Page, expect
from test_browser import browser, page

pytestmark = [pytest.mark.browser, pytest.mark.e2e, needs_root, needs_default_env, needs_chromium]
__all__ = ["browser", "page"]  # the browser tests' own fixtures

SPAWN_TIMEOUT_MS = 120_000
USER = "hana"


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with running_hub() as running:
        yield running


def put_in_groups(hub: Hub, user: str, groups: list[str]) -> None:
    """As the hub's admin, through JupyterHub's REST API."""
    admin = hub.login("admin", hub.admin_password)
    for group in groups:
        assert admin.api("POST", f"/groups/{group}").status_code in (201, 409)
        added = admin.api("POST", f"/groups/{group}/users", json={"users": [user]})
        assert added.status_code == 200, added.text


def test_a_named_server_from_start_to_delete_on_its_card(hub: Hub, page: Page) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    password = hub.add_user(USER)
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", USER)
    page.fill("#password_input", password)
    page.click("#login_submit")
    page.wait_for_url("**/hub/spawn")
    put_in_groups(hub, USER, ["optics", "optics-champions"])  # a hub user once logged in

    page.goto(f"{hub.url}/hub/home")
    default = page.locator(".hs-card[data-server-name='']")
    expect(default.locator(".hs-status")).to_have_text("stopped")
    expect(default.get_by_role("link", name="Start")).to_have_attribute("href", "/hub/spawn/hana")
    expect(page.locator(".hs-groups")).to_contain_text("optics")
    champion = page.locator(".hs-champion")
    expect(champion).to_contain_text("You are a champion of optics")
    members = champion.get_by_role("link", name="its members and their servers")
    expect(members).to_have_attribute("href", "/hub/admin")
    usage = champion.get_by_role("link", name="its usage")
    expect(usage).to_have_attribute("href", "/hub/usage?group=optics")

    page.get_by_label("New server name").fill("lens")
    page.get_by_role("button", name="New server…").click()
    page.wait_for_url("**/hub/spawn/hana/lens")
    page.get_by_text("Tiny", exact=True).click()
    page.get_by_role("button", name="Start").click()
    page.wait_for_url("**/user/hana/lens/**", timeout=SPAWN_TIMEOUT_MS)

    page.goto(f"{hub.url}/hub/home")
    card = page.locator(".hs-card[data-server-name=lens]")
    expect(card.locator(".hs-status")).to_have_text("running")
    expect(card.locator(".hs-machine")).to_have_text("Tiny")
    expect(card.locator(".hs-environment")).to_have_text("Python 3")
    expect(card.locator(".hs-backend")).to_contain_text("this hub's machine")
    expect(card.locator(".hs-usage-text")).to_have_text(
        re.compile(r"^[\d.]+ [KM]?B of 64 MB used$")
    )
    expect(card.get_by_role("link", name="Open")).to_have_attribute("href", "/user/hana/lens/")
    expect(page.locator(".hs-account .hs-usage-text")).to_have_text(
        re.compile(r"^[\d.]+ [KM]?B of 128 MB used$")
    )
    page.screenshot(path=str(ARTIFACTS / "home-running.png"), full_page=True)

    card.get_by_role("button", name="Stop").click()
    expect(card.locator(".hs-status")).to_have_text("stopped", timeout=60_000)
    expect(card.locator(".hs-usage-text")).to_contain_text("of 64 MB used")
    page.screenshot(path=str(ARTIFACTS / "home-stopped.png"), full_page=True)

    image = hub.data_dir / "storage/servers" / f"{hub.prefix}{USER}" / "lens.img"
    assert image.exists()
    card.get_by_role("button", name="Delete…").click()
    dialog = page.locator(".hs-confirm-delete")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Its volume goes too")
    expect(dialog).to_contain_text("~/volumes/lens")
    page.screenshot(path=str(ARTIFACTS / "home-delete.png"), full_page=True)
    dialog.get_by_role("button", name="Keep it").click()
    expect(dialog).to_be_hidden()
    assert image.exists(), "keeping it deletes nothing"

    card.get_by_role("button", name="Delete…").click()
    dialog.get_by_role("button", name="Delete server and volume").click()
    expect(card).to_have_count(0, timeout=60_000)
    wait_for(lambda: not image.exists() or None, 60, "the deleted server's volume to go")
    api = hub.login(USER, password)
    assert api.model("lens", include_stopped=True) is None
