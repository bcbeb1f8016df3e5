"""The binder service's launch page in a real browser: log in to the hub, reach the page
through the hub's OAuth, fill the form, get the share link and badge snippets.

Drives Debian's Chromium through Playwright against a real ``hubstack up`` hub, so the
page's Content-Security-Policy (only its own nonce'd style and script) is in force and the
badge must load from the service. Screenshots go to ``artifacts/browser/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from chromium import ARTIFACTS, chromium, needs_chromium
from conftest import needs_default_env, needs_root
from gitserver import GitDaemon, make_repo
from hubtest import Hub, running_hub
from playwright.sync_api import Browser, Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.e2e, needs_root, needs_default_env, needs_chromium]

SERVICE = "/services/binder/"
LAUNCH_TIMEOUT_MS = 600_000
NOTEBOOK = '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}\n'
OVERRIDES = {
    "binder": {
        "allowed_hosts": ["github.com", "127.0.0.1:*"],
        "allowed_schemes": ["https", "git"],
    }
}


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with running_hub(OVERRIDES) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser, hub: Hub) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=hub.url)
    try:
        yield context.new_page()
    finally:
        context.close()


def log_in_on_the_way(page: Page, url: str, name: str, password: str) -> None:
    """Open ``url``, which sends a browser without a login through the hub's login form."""
    page.goto(url)
    page.wait_for_url("**/hub/login**")
    page.fill("#username_input", name)
    page.fill("#password_input", password)
    page.click("#login_submit")


def test_fill_the_launch_form_and_get_the_share_link(hub: Hub, page: Page) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))

    log_in_on_the_way(page, f"{hub.url}{SERVICE}", "dora", hub.add_user("dora"))
    page.wait_for_url(f"{hub.url}{SERVICE}")
    expect(page.get_by_role("heading", name="Launch a repository")).to_be_visible()

    page.get_by_label("Repository URL").fill("ext::sh-c-touch")
    page.get_by_role("button", name="Make a launch link").click()
    expect(page.locator("#hs-error")).to_contain_text("git remote helpers")
    expect(page.get_by_label("Repository URL")).to_have_value("ext::sh-c-touch")

    page.get_by_label("Repository URL").fill("https://github.com/org/repo")
    page.get_by_label("Branch, tag or commit").fill("main")
    page.get_by_label("Path to open (optional)").fill("notebooks/intro.ipynb")
    page.get_by_role("button", name="Make a launch link").click()

    link = f"{hub.url}{SERVICE}v2/gh/org/repo/main?urlpath=lab%2Ftree%2Fnotebooks%2Fintro.ipynb"
    badge = f"{hub.url}{SERVICE}badge_logo.svg"
    expect(page.locator("#hs-error")).to_have_count(0)
    expect(page.get_by_label("Share this link")).to_have_value(link)
    expect(page.get_by_label("Badge for a README (Markdown)")).to_have_value(
        f"[![Binder]({badge})]({link})"
    )
    expect(page.get_by_label("Badge (reStructuredText)")).to_have_value(
        f".. image:: {badge}\n   :target: {link}"
    )
    expect(page.locator("#hs-launch-form")).to_have_attribute("action", link.removeprefix(hub.url))
    expect(page.locator("#hs-facts")).to_contain_text("https://github.com/org/repo")
    badge_image = page.get_by_alt_text("launch: hubstack")
    expect(badge_image).to_be_visible()
    assert badge_image.evaluate("image => image.complete && image.naturalWidth") == 128

    page.locator("[data-copy=hs-share-url]").click()
    expect(page.locator("[data-copy=hs-share-url]")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == link
    page.screenshot(path=str(ARTIFACTS / "binder-launch-page.png"), full_page=True)
    refused = [text for text in console if "Content Security Policy" in text]
    assert refused == [], "the page's own style and script pass its policy"


def test_a_share_link_builds_and_opens_jupyterlab_at_the_notebook(
    hub: Hub, git: GitDaemon, page: Page
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    make_repo(git.base / "paper", {"requirements.txt": "six\n", "notebooks/intro.ipynb": NOTEBOOK})
    spec = f"git/{quote(git.url('paper'), safe='')}/main"
    link = f"{hub.url}{SERVICE}v2/{spec}?labpath=notebooks/intro.ipynb"

    log_in_on_the_way(page, link, "emil", hub.add_user("emil"))
    page.wait_for_url(link)
    expect(page.locator("#hs-facts")).to_contain_text(git.url("paper"))
    page.get_by_role("button", name="Launch").click()
    expect(page.get_by_role("heading", name="Launching")).to_contain_text(git.url("paper"))
    expect(page.locator("#hs-log")).to_contain_text("Resolving main")
    # Past waiting: the spawner's own phases (fetching, building) are being shown.
    expect(page.locator('#hs-phases [data-phase="waiting"]')).to_have_class(
        re.compile("hs-done"), timeout=LAUNCH_TIMEOUT_MS
    )
    page.screenshot(path=str(ARTIFACTS / "binder-launch-progress.png"), full_page=True)

    page.wait_for_url("**/user/emil/**/lab/tree/notebooks/intro.ipynb", timeout=LAUNCH_TIMEOUT_MS)
    expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=LAUNCH_TIMEOUT_MS)
    expect(page.get_by_role("tab", name="intro.ipynb")).to_be_visible(timeout=LAUNCH_TIMEOUT_MS)
    page.screenshot(path=str(ARTIFACTS / "binder-launched-notebook.png"), full_page=True)
