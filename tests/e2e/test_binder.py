"""The binder service on a real hub: the launch page, share links, the badge and BinderHub's
build API (``/build/<provider>/<spec>`` as an event stream), through the proxy as users and
Binder clients reach them."""

from __future__ import annotations

import html
import json
import re
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import requests
from conftest import needs_default_env, needs_root
from gitserver import GitDaemon, add_commit, make_repo, tag
from hubtest import Hub, Session, launch_events, running_hub, wait_for

from hubstack.config.models import BinderSettings
from hubstack.launch.repo import repo_source, server_name

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]

SERVICE = "/services/binder/"
DOCS_SITE = "https://docs.example.org"  # a site whose pages run a Binder client (thebe)
STREAM = {"Accept": "text/event-stream"}
LAUNCH_TIMEOUT = 600


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    overrides = {
        "binder": {
            "allowed_hosts": ["github.com", "gitlab.com", "127.0.0.1:*"],
            "allowed_schemes": ["https", "http", "git"],
            "cors_origins": [DOCS_SITE],
        },
        "policy": {"named_servers": {"max": 2}},
    }
    with running_hub(overrides) as running:
        yield running


def page(session: Session, where: str = "", /, **params: str) -> requests.Response:
    """A service page in the user's browser session (the OAuth round trip included)."""
    return session.http.get(f"{session.hub.url}{SERVICE}{where}", params=params, timeout=60)


def text(resp: requests.Response) -> str:
    """The page's text as a reader sees it (entities decoded)."""
    return html.unescape(resp.content.decode())


def build(
    session: Session | None, hub: Hub, spec: str, *, headers: dict[str, str] | None = None
) -> requests.Response:
    """Open the build stream the way an API client does: with the token in the header."""
    sent = dict(STREAM if headers is None else headers)
    if session is not None:
        sent["Authorization"] = f"token {session.token}"
    return requests.get(
        f"{hub.url}{SERVICE}build/{spec}", headers=sent, stream=True, timeout=LAUNCH_TIMEOUT
    )


def phases(seen: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(event["phase"] for event in seen))


def git_spec(url: str, ref: str) -> str:
    return f"git/{quote(url, safe='')}/{ref}"


def new_repo(git: GitDaemon, files: dict[str, str]) -> str:
    name = f"b{secrets.token_hex(3)}"
    make_repo(git.base / name, files)
    return name


def test_pages_need_a_login_and_the_badge_does_not(hub: Hub) -> None:
    anonymous = requests.Session()
    for path in ("", "v2/gh/org/repo/main"):
        resp = anonymous.get(f"{hub.url}{SERVICE}{path}", allow_redirects=False, timeout=30)
        assert resp.status_code == 302, resp.text
        assert "/hub/api/oauth2/authorize" in resp.headers["Location"]
    resp = anonymous.get(f"{hub.url}{SERVICE}", timeout=30)
    assert resp.url.startswith(f"{hub.url}/hub/login"), "followed, it ends at the login form"

    for badge in ("badge_logo.svg", "badge.svg"):
        resp = anonymous.get(f"{hub.url}{SERVICE}{badge}", timeout=30)
        assert resp.status_code == 200
        assert resp.headers["Content-Type"] == "image/svg+xml"
        assert resp.text.startswith("<svg") and "hubstack" in resp.text

    resp = anonymous.get(f"{hub.url}{SERVICE}no-such-page", timeout=30)
    assert resp.status_code == 404
    assert "There is no such page" in resp.text and "Traceback" not in resp.text


def test_launch_page_makes_share_links_and_badges(hub: Hub, alice: Session) -> None:
    empty = page(alice)
    assert empty.status_code == 200, empty.text
    assert 'name="repo"' in empty.text and "Repository URL" in empty.text

    resp = page(
        alice,
        repo="https://github.com/org/repo",
        ref="main",
        path="notebooks/intro.ipynb",
        pathtype="file",
    )
    assert resp.status_code == 200, resp.text
    link = f"{hub.url}{SERVICE}v2/gh/org/repo/main?urlpath=lab%2Ftree%2Fnotebooks%2Fintro.ipynb"
    badge = f"{hub.url}{SERVICE}badge_logo.svg"
    shown = text(resp)
    assert f'action="{link.removeprefix(hub.url)}"' in shown, "the Launch button posts to it"
    assert f"[![Binder]({badge})]({link})" in shown
    assert f".. image:: {badge}\n   :target: {link}" in shown

    resp = page(
        alice, repo="git://127.0.0.1:9419/x/tools.git", ref="v1.0", path="lab", pathtype="url"
    )
    assert resp.status_code == 200, resp.text
    assert f"{SERVICE}v2/git/git%3A%2F%2F127.0.0.1%3A9419%2Fx%2Ftools.git/v1.0?urlpath=lab" in text(
        resp
    )


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"repo": "ext::sh-c-touch"}, "git remote helpers"),
        ({"repo": "file:///etc/passwd"}, "not allowed here"),
        ({"repo": "git://evil.example/org/repo"}, "host 'evil.example' are not allowed"),
        ({"repo": "https://github.com/org/repo", "ref": "-x"}, "starts with '-'"),
        ({"repo": "https://github.com/org/repo", "path": "../../etc/passwd"}, "contains '..'"),
        (
            {"repo": "https://github.com/org/repo", "path": "//evil.com", "pathtype": "url"},
            "starts with '/'",
        ),
        ({"repo": "https://github.com/org/repo", "pathtype": "shell"}, "Unknown path type"),
    ],
)
def test_launch_page_refuses_bad_input_with_400(
    hub: Hub, alice: Session, fields: dict[str, str], says: str
) -> None:
    resp = page(alice, **fields)
    assert resp.status_code == 400, resp.text
    assert says in text(resp)
    assert 'name="repo"' in resp.text, "the form is shown again to correct it"
    assert "v2/" not in resp.text.split("</form>")[1], "no share link for a refused input"


def test_launch_page_escapes_what_the_user_sent(hub: Hub, alice: Session) -> None:
    resp = page(alice, repo='"><script>alert(1)</script>', ref="<b>x</b>")
    assert resp.status_code == 400
    assert "<script>alert(1)" not in resp.text and "<b>x</b>" not in resp.text
    assert "&lt;script&gt;alert(1)" in resp.text
    assert "script-src 'nonce-" in resp.headers["Content-Security-Policy"]


BAD_SPECS = [
    ("git/ext%3A%3Ash-c-touch/main", "", "git remote helpers"),
    ("git/file%3A%2F%2F%2Fetc%2Fpasswd/main", "", "not allowed here"),
    ("git/https%3A%2F%2Fevil.example%2Forg%2Frepo/main", "", "host 'evil.example'"),
    ("gh/org/repo/-x", "", "starts with '-'"),
    ("hg/org/repo/main", "", "Unknown repository provider"),
]
BAD_PATHS = [
    ("gh/org/repo/main", "labpath=../../etc/passwd", "contains '..'"),
    ("gh/org/repo/main", "urlpath=//evil.com", "starts with '/'"),
    ("gh/org/repo/main", "urlpath=https://evil.com/", "absolute URL"),
    ("gh/org/repo/main", "filepath=a%5C..%5Cb", "backslash"),
]


@pytest.mark.parametrize(("spec", "query", "says"), BAD_SPECS + BAD_PATHS)
def test_share_link_page_refuses_bad_input_with_400(
    hub: Hub, alice: Session, spec: str, query: str, says: str
) -> None:
    resp = alice.http.get(f"{hub.url}{SERVICE}v2/{spec}?{query}", allow_redirects=False, timeout=60)
    assert resp.status_code == 400, resp.text
    assert says in text(resp)
    assert "EventSource" not in resp.text and "Location" not in resp.headers


def test_share_link_page_follows_the_build_stream(hub: Hub, alice: Session) -> None:
    asked = page(alice, "v2/gh/org/repo/main", labpath="notebooks/intro.ipynb")
    assert asked.status_code == 200, asked.text
    assert "EventSource" not in asked.text, "opening the link starts nothing"
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', asked.text)
    assert xsrf, "its Launch button posts the page's XSRF token"
    resp = alice.http.post(asked.url, data={"_xsrf": xsrf.group(1)}, timeout=60)
    assert resp.status_code == 200, resp.text
    shown = text(resp)
    assert "https://github.com/org/repo" in shown
    assert f'data-build-url="{SERVICE}build/gh/org/repo/main?_xsrf=' in shown
    assert 'data-urlpath="lab/tree/notebooks/intro.ipynb"' in shown
    assert "new EventSource" in shown


@pytest.mark.parametrize(("spec", "says"), [(spec, says) for spec, _, says in BAD_SPECS])
def test_build_api_refuses_bad_specs_with_400_and_a_failed_event(
    hub: Hub, alice: Session, spec: str, says: str
) -> None:
    resp = build(alice, hub, spec)
    assert resp.status_code == 400
    assert resp.headers["Content-Type"] == "text/event-stream"
    (event,) = launch_events(resp)
    assert event["phase"] == "failed" and event["status_code"] == 400
    assert says in event["message"]


def test_build_api_needs_the_event_stream_and_a_user(hub: Hub, alice: Session) -> None:
    resp = build(alice, hub, "gh/org/repo/main", headers={})
    assert resp.status_code == 400
    assert "Accept: text/event-stream" in resp.text

    resp = build(None, hub, "gh/org/repo/main")
    assert resp.status_code == 403
    (event,) = launch_events(resp)
    assert event["phase"] == "failed" and "Log in" in event["message"]

    # EventSource cannot send headers, so Binder clients put the token in the URL.
    resp = requests.get(
        f"{hub.url}{SERVICE}build/gh/org/repo/-x",
        params={"token": alice.token},
        headers=STREAM,
        timeout=60,
    )
    assert resp.status_code == 400, "the token was taken: the spec is what is refused"
    assert "starts with '-'" in resp.text
    assert "Set-Cookie" not in resp.headers, "a token in the URL logs no browser in"

    resp = requests.get(
        f"{hub.url}{SERVICE}build/gh/org/repo/main",
        headers={**STREAM, "Authorization": "token not-a-token"},
        timeout=60,
    )
    assert resp.status_code == 403


def test_only_listed_sites_may_use_the_build_api_from_their_pages(hub: Hub, alice: Session) -> None:
    url = f"{hub.url}{SERVICE}build/gh/org/repo/-x"
    preflight = {"Access-Control-Request-Method": "GET"}
    allowed = requests.options(url, headers={"Origin": DOCS_SITE, **preflight}, timeout=60)
    assert allowed.status_code == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == DOCS_SITE
    assert "Authorization" in allowed.headers["Access-Control-Allow-Headers"]
    other = requests.options(
        url, headers={"Origin": "https://evil.example", **preflight}, timeout=60
    )
    assert other.status_code == 403
    assert "Access-Control-Allow-Origin" not in other.headers
    refused = requests.get(
        url,
        headers={**STREAM, "Origin": DOCS_SITE, "Authorization": f"token {alice.token}"},
        timeout=60,
    )
    assert refused.status_code == 400  # the client can read why
    assert refused.headers["Access-Control-Allow-Origin"] == DOCS_SITE


def test_a_launch_through_the_build_api(hub: Hub, git: GitDaemon, bob: Session) -> None:
    name = new_repo(git, {"requirements.txt": "six==1.16.0\n", "notebooks/intro.ipynb": "{}\n"})
    url = git.url(name)
    seen = launch_events(build(bob, hub, git_spec(url, "main")))
    assert seen[-1]["phase"] == "ready", seen
    assert phases(seen)[0] == "waiting"
    assert {"fetching", "building", "built", "launching"} <= set(phases(seen)), seen
    ready = seen[-1]
    assert ready["url"].startswith(f"{hub.url}/user/bob/") and ready["url"].endswith("/")
    assert ready["repo_url"] == url
    assert ready["binder_launch_host"] == f"{hub.url}{SERVICE}"
    assert ready["binder_request"] == f"v2/{git_spec(url, 'main')}"
    server = ready["url"].rstrip("/").rsplit("/", 1)[1]
    model = bob.model(server)
    assert model is not None and model["user_options"]["repo"] == url
    commit = model["user_options"]["commit"]
    assert ready["binder_persistent_request"] == f"v2/{git_spec(url, commit)}"

    # The token opens this server, and nothing else of bob's.
    status = requests.get(
        f"{ready['url']}api/contents/notebooks",
        headers={"Authorization": f"token {ready['token']}"},
        timeout=60,
    )
    assert status.status_code == 200, status.text
    assert [item["name"] for item in status.json()["content"]] == ["intro.ipynb"]
    # A Binder client on a listed site may use the server from its pages, others not.
    for origin, allowed in ((DOCS_SITE, True), ("https://evil.example", False)):
        api = requests.get(
            f"{ready['url']}api/status",
            headers={"Authorization": f"token {ready['token']}", "Origin": origin},
            timeout=60,
        )
        assert (api.headers.get("Access-Control-Allow-Origin") == origin) is allowed
    for method, path in (("DELETE", f"servers/{server}"), ("POST", "tokens")):
        resp = requests.request(
            method,
            f"{hub.url}/hub/api/users/bob/{path}",
            headers={"Authorization": f"token {ready['token']}"},
            timeout=60,
        )
        assert resp.status_code == 403, (method, path, resp.text)

    # The same repository and ref again: the running server, at once.
    again = launch_events(build(bob, hub, git_spec(url, "main")))
    assert phases(again) == ["waiting", "ready"], again
    assert again[-1]["url"] == ready["url"]

    # Another ref of it: the server is restarted with that ref.
    add_commit(git.base / name, {"notebooks/other.ipynb": "{}\n"})
    tag(git.base / name, "other")
    other = launch_events(build(bob, hub, git_spec(url, "other")))
    assert other[-1]["phase"] == "ready", other
    assert any("Stopping your server" in event["message"] for event in other), other
    model = bob.model(server)
    assert model is not None and model["user_options"]["ref"] == "other"
    bob.stop(server, remove=True)


def test_a_client_that_leaves_does_not_stop_the_launch(
    hub: Hub, git: GitDaemon, bob: Session
) -> None:
    name = new_repo(git, {"requirements.txt": "six==1.16.0\n"})
    url = git.url(name)
    binder = BinderSettings(allowed_hosts=["127.0.0.1:*"], allowed_schemes=["git"])
    server = server_name(repo_source(url, "main", binder), 20)
    first = launch_events(
        build(bob, hub, git_spec(url, "main")), until=("fetching", "ready", "failed")
    )
    assert first[-1]["phase"] == "fetching", first

    bob.wait_ready(server, timeout=LAUNCH_TIMEOUT)
    started = (bob.model(server) or {}).get("started")
    # Coming back finds the server the first request started.
    seen = launch_events(build(bob, hub, git_spec(url, "main")))
    assert phases(seen) == ["waiting", "ready"], seen
    assert seen[-1]["url"].endswith(f"/user/bob/{server}/")
    assert (bob.model(server) or {}).get("started") == started
    bob.stop(server, remove=True)


def test_the_hubs_refusal_is_a_failed_event(hub: Hub, git: GitDaemon) -> None:
    fred = hub.new_user("fred")
    for server in ("one", "two"):
        assert fred.api("PUT", f"/users/fred/servers/{server}", json={}).status_code == 201
    seen = launch_events(build(fred, hub, git_spec(git.url("anything"), "main")))
    assert seen[-1]["phase"] == "failed", seen
    assert seen[-1]["status_code"] == 400
    assert "You already have 2 named servers" in seen[-1]["message"]


def test_the_champions_page_lists_rebuilds_and_removes(
    hub: Hub, git: GitDaemon, bob: Session
) -> None:
    name = new_repo(git, {"requirements.txt": "tabulate==0.9.0\n# champions\n"})
    seen = launch_events(build(bob, hub, git_spec(git.url(name), "main")))
    assert seen[-1]["phase"] == "ready", seen
    bob.stop(seen[-1]["url"].rstrip("/").rsplit("/", 1)[1], remove=True)

    assert page(bob, "environments").status_code == 403  # admins only
    admin = hub.login("admin", hub.admin_password)
    listing = page(admin, "environments")
    assert listing.status_code == 200
    rows = dict(re.findall(r'<tr data-key="([0-9a-f]{64})">(.*?)</tr>', listing.text, re.S))
    key = next(key for key, row in rows.items() if git.url(name) in row)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', listing.text)
    assert xsrf is not None

    meta = hub.root / "binder/envs" / key / "meta.json"
    built_at = json.loads(meta.read_text())["built_at"]
    rebuild = admin.http.post(
        f"{hub.url}{SERVICE}environments",
        data={"action": "rebuild", "key": key[:12], "_xsrf": xsrf.group(1)},
        timeout=60,
    )
    assert rebuild.status_code == 200 and f"Rebuilding {key[:12]}" in text(rebuild)

    def rebuilt() -> bool:
        return meta.exists() and json.loads(meta.read_text())["built_at"] > built_at

    wait_for(rebuilt, 300, "the rebuild to finish")

    forged = admin.http.post(
        f"{hub.url}{SERVICE}environments", data={"action": "remove", "key": key}, timeout=60
    )
    assert forged.status_code == 403  # no XSRF token: a request from another site
    removed = admin.http.post(
        f"{hub.url}{SERVICE}environments",
        data={"action": "remove", "key": key, "_xsrf": xsrf.group(1)},
        timeout=60,
    )
    assert removed.status_code == 200 and f"Removed {key[:12]}" in text(removed)
    assert f'data-key="{key}"' not in removed.text
    assert not (hub.root / "binder/envs" / key).exists()
    unknown = admin.http.post(
        f"{hub.url}{SERVICE}environments",
        data={"action": "rebuild", "key": "nothing", "_xsrf": xsrf.group(1)},
        timeout=60,
    )
    assert unknown.status_code == 400 and "no environment" in text(unknown)
