"""In a real browser: log in, pick a machine on the spawn form, start, land in JupyterLab,
and browse a storage connection in jupyter-fsspec's panel.

Drives Debian's Chromium through Playwright against a real ``hubstack up`` hub, so the
login page, our options form inside JupyterHub's spawn page, the spawn-pending redirect and
the single-user OAuth round trip are all exercised as a user meets them. Screenshots go to
``artifacts/browser/`` for people to look at.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from chromium import ARTIFACTS, chromium, needs_chromium
from conftest import needs_default_env, needs_root
from hubtest import DEFAULT_ENV, Hub, running_hub
from playwright.sync_api import Browser, Page, expect
from storage_emulators import moto_s3

SPAWN_TIMEOUT_MS = 120_000

pytestmark = [pytest.mark.browser, pytest.mark.e2e, needs_root, needs_default_env, needs_chromium]

# Written out here rather than relying on hubtest's defaults: the test clicks "Tiny".
OVERRIDES = {
    "machines": [
        {"id": "small", "display": "Small", "cpu": 1, "memory": "1G"},
        {"id": "tiny", "display": "Tiny", "cpu": 0.5, "memory": "400M"},
    ],
    "environments": [{"id": "python", "display": "Python 3", "prefix": str(DEFAULT_ENV)}],
}


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with running_hub(OVERRIDES) as running:
        yield running


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server (an emulator) with a bucket holding one table."""
    with moto_s3() as s3:
        code = (
            "import s3fs, sys\n"
            "s3 = s3fs.S3FileSystem(key='k', secret='x', endpoint_url=sys.argv[1])\n"
            "s3.mkdir('br-bucket')\n"
            "s3.pipe_file('br-bucket/tables/table.csv', b'x,y\\n1,2\\n')\n"
        )
        subprocess.run(
            [str(DEFAULT_ENV / "bin/python"), "-c", code, s3.endpoint], check=True, timeout=120
        )
        yield s3.endpoint


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


def test_login_pick_tiny_land_in_jupyterlab_and_browse_storage(
    hub: Hub, page: Page, s3_endpoint: str
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    password = hub.add_user("carol")
    api = hub.login("carol", password)  # a separate session, only for its API token
    connection = {
        "name": "lab",
        "kind": "s3-compatible",
        "endpoint": s3_endpoint,
        "container": "br-bucket",
        "credential": {"access_key_id": "AKIABROWSER", "secret_access_key": "browser-secret"},
    }
    assert api.api("POST", "/storage/users/carol/connections", json=connection).status_code == 201
    try:
        page.goto(f"{hub.url}/hub/login")
        page.fill("#username_input", "carol")
        page.fill("#password_input", password)
        page.click("#login_submit")

        page.wait_for_url("**/hub/spawn")
        expect(page.get_by_text("Machine type")).to_be_visible()
        page.get_by_text("Tiny", exact=True).click()
        expect(page.locator("#hs-machine-tiny")).to_be_checked()
        expect(page.locator("#hs-machine-small")).not_to_be_checked()
        expect(page.locator("#hs-environment-python")).to_be_checked()
        page.screenshot(path=str(ARTIFACTS / "spawn-form.png"), full_page=True)

        page.get_by_role("button", name="Start").click()
        page.wait_for_url("**/user/carol/lab**", timeout=SPAWN_TIMEOUT_MS)
        expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=SPAWN_TIMEOUT_MS)
        expect(page.locator(".jp-Launcher").first).to_be_visible(timeout=SPAWN_TIMEOUT_MS)
        page.screenshot(path=str(ARTIFACTS / "jupyterlab.png"), full_page=True)

        model = api.model()
        assert model is not None and model["ready"], model
        assert model["user_options"] == {"machine": "tiny", "environment": "python"}

        # jupyter-fsspec's panel lists the connection by name and browses it.
        page.locator('li[data-id="jupyterFsspec:widget"]').click()
        source = page.locator(".jfss-fsitem-name", has_text="lab")
        expect(source).to_be_visible(timeout=30_000)
        source.click()
        expect(page.get_by_text("tables", exact=True)).to_be_visible(timeout=30_000)
        page.get_by_text("tables", exact=True).click()
        expect(page.get_by_text("table.csv", exact=True)).to_be_visible(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "fsspec-panel.png"), full_page=True)
    finally:
        if api.model() is not None:
            api.stop()
