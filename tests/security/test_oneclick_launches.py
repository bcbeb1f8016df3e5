"""A link someone sends starts nothing: it shows what it would run, and a click launches it.

Share links (``/services/binder/v2/...``), the launch page's Launch button, the build
stream a browser opens with the login cookie, and links to the spawn page with options
(``/hub/spawn?environment=repository&repo=...``), on a real hub with repositories on a git
daemon, through plain HTTP requests and through headless Chromium.

Launches here ask for a branch that does not exist: the launch runs (the hub creates the
server and asks the repository for the branch) and fails at once, so no build is waited for.
"""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Iterator
from urllib.parse import quote, urlencode

import pytest
import requests
from browser.chromium import ARTIFACTS, chromium, needs_chromium
from conftest import needs_default_env, needs_root
from gitserver import GitDaemon, make_repo
from hubtest import Hub, Session, launch_events, running_hub, wait_for
from playwright.sync_api import expect

from hubstack.config.models import BinderSettings
from hubstack.launch.form import REPOSITORY_WARNING
from hubstack.launch.repo import repo_source, server_name

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]

SERVICE = "/services/binder/"
STREAM = {"Accept": "text/event-stream"}
MISSING_REF = "no-such-branch"


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with running_hub() as running:
        yield running


@pytest.fixture(scope="module")
def carol(hub: Hub) -> Session:
    return hub.new_user("carol")


def new_repo(git: GitDaemon) -> str:
    name = f"r{secrets.token_hex(3)}"
    make_repo(git.base / name, {"README.md": "hello\n"})
    return git.url(name)


def server_for(hub: Hub, url: str) -> str:
    source = repo_source(
        url, MISSING_REF, BinderSettings(allowed_hosts=["127.0.0.1:*"], allowed_schemes=["git"])
    )
    return server_name(source, 20)


def share_link(hub: Hub, url: str) -> str:
    return f"{hub.url}{SERVICE}v2/git/{quote(url, safe='')}/{MISSING_REF}"


def launched(session: Session, server: str) -> bool:
    """Whether a start of the server was asked for: it then has options (a launch, with its
    fetch and build, is always a server's start). JupyterHub's spawn page of a named server
    creates the server's record, without options, by itself."""
    model = session.model(server, include_stopped=True) or {}
    return bool(model.get("user_options") or model.get("pending") or model.get("ready"))


def shown(resp: requests.Response) -> str:
    return html.unescape(resp.content.decode())


def xsrf_of(page: str) -> str:
    match = re.search(r'name="_xsrf" value="([^"]+)"', page)
    assert match, "the page has a form with its XSRF token"
    return match.group(1)


def test_a_share_link_shows_what_it_runs_and_starts_only_on_the_click(
    hub: Hub, git: GitDaemon, carol: Session
) -> None:
    url = new_repo(git)
    server = server_for(hub, url)
    link = share_link(hub, url)

    page = carol.http.get(link, timeout=60)
    assert page.status_code == 200, page.text
    text = shown(page)
    host = url.split("/")[2]
    for fact in (url, host, MISSING_REF, server, REPOSITORY_WARNING):
        assert fact in text, f"the page shows {fact!r}"
    assert "EventSource" not in page.text and 'method="post"' in page.text
    # The launch page's Launch button is a form posting to the link, too.
    launcher = carol.http.get(
        f"{hub.url}{SERVICE}", params={"repo": url, "ref": MISSING_REF}, timeout=60
    )
    assert launcher.status_code == 200 and REPOSITORY_WARNING in shown(launcher)
    assert f'action="{link.removeprefix(hub.url)}"' in launcher.text
    assert not launched(carol, server)

    # The build stream with the login cookie but without the page's XSRF token: what a
    # page of another site, or a link, could make a browser open.
    build = f"{hub.url}{SERVICE}build/git/{quote(url, safe='')}/{MISSING_REF}"
    for params in ({}, {"_xsrf": "forged"}):
        resp = carol.http.get(build, params=params, headers=STREAM, timeout=60)
        assert resp.status_code == 403, resp.text
        assert "Launch button" in resp.text
    assert not launched(carol, server)

    # A POST without the page's token is refused.
    assert carol.http.post(link, data={}, timeout=60).status_code == 403
    assert not launched(carol, server)

    # The click: the form's POST, then the stream the launch page opens.
    progress = carol.http.post(link, data={"_xsrf": xsrf_of(page.text)}, timeout=60)
    assert progress.status_code == 200, progress.text
    stream_url = html.unescape(re.search(r'data-build-url="([^"]+)"', progress.text).group(1))
    with carol.http.get(hub.url + stream_url, headers=STREAM, stream=True, timeout=120) as resp:
        assert resp.status_code == 200, resp.text
        seen = launch_events(resp)
    assert seen[-1]["phase"] == "failed" and MISSING_REF in seen[-1]["message"], seen
    assert launched(carol, server), "the click launched it"


def spawn_link(hub: Hub, user: str, server: str, **options: str) -> str:
    return f"{hub.url}/hub/spawn/{user}/{server}?{urlencode(options)}"


def test_a_spawn_link_fills_in_the_form_and_starts_only_on_start(hub: Hub, git: GitDaemon) -> None:
    dora = hub.new_user("dora")
    url = new_repo(git)
    options = {"environment": "repository", "repo": url, "ref": MISSING_REF}
    link = spawn_link(hub, "dora", "fromlink", machine="tiny", **options)
    page = dora.http.get(link, timeout=60)
    assert page.status_code == 200, page.text
    text = shown(page)
    for fact in (url, url.split("/")[2], MISSING_REF, REPOSITORY_WARNING, "press Start"):
        assert fact in text, f"the form shows {fact!r}"
    assert re.search(r'value="repository"[^>]*checked', page.text), "the link's choice"
    assert re.search(r'value="tiny"[^>]*checked', page.text)
    assert f'value="{url}"' in page.text
    assert not launched(dora, "fromlink")

    # JupyterHub's own prefix for options in links, and the default server.
    opt = {f"opt-{key}": value for key, value in options.items()}
    assert dora.http.get(f"{hub.url}/hub/spawn?{urlencode(opt)}", timeout=60).status_code == 200
    bad = spawn_link(hub, "dora", "bad", environment="repository", repo="file:///etc/passwd")
    refused = dora.http.get(bad, timeout=60)
    assert refused.status_code == 200 and "cannot be launched" in shown(refused)
    assert not launched(dora, "")
    assert not launched(dora, "bad")
    assert "LinkOpensForm" not in hub.log(), "a link filling in the form is no error"

    # Start: JupyterHub's form posts to the same address, with its XSRF token.
    form = {"machine": "tiny", **options, "_xsrf": dora.http.cookies.get("_xsrf", path="/hub/")}
    resp = dora.http.post(link, data=form, allow_redirects=False, timeout=60)
    # The start fails within a second (no such branch): JupyterHub then answers with it.
    assert resp.status_code == 302 or MISSING_REF in shown(resp), resp.text[-2000:]
    assert launched(dora, "fromlink")


@needs_chromium
@pytest.mark.browser
def test_in_a_browser_links_wait_for_the_click(hub: Hub, git: GitDaemon) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    password = hub.add_user("emil")
    emil = hub.login("emil", password)
    url = new_repo(git)
    server = server_for(hub, url)
    link = share_link(hub, url)
    with chromium() as browser:
        page = browser.new_context().new_page()
        page.goto(link)
        page.wait_for_url("**/hub/login**")
        page.fill("#username_input", "emil")
        page.fill("#password_input", password)
        page.click("#login_submit")
        page.wait_for_url(link)
        expect(page.locator("#hs-facts")).to_contain_text(url)
        expect(page.locator("#hs-warning")).to_have_text(REPOSITORY_WARNING)
        page.screenshot(path=str(ARTIFACTS / "binder-launch-confirm.png"), full_page=True)
        assert not launched(emil, server)

        page.get_by_role("button", name="Launch").click()
        expect(page.locator("body")).to_have_attribute("data-phase", "failed", timeout=120_000)
        expect(page.locator("#hs-failure")).to_contain_text(MISSING_REF)
        assert launched(emil, server)

        page.goto(spawn_link(hub, "emil", "viaform", environment="repository", repo=url))
        expect(page.locator("#hs-asked")).to_contain_text(url)
        assert not launched(emil, "viaform")
        page.get_by_role("button", name="Start").click()
        wait_for(lambda: launched(emil, "viaform"), 60, "the server's start")
