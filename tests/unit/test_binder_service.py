"""The binder service's pure parts: the event stream format both ways, the hub's progress
events in BinderHub's phases, the ``ready`` event, public URLs and the rendered pages."""

from __future__ import annotations

import asyncio
import html
import socket

import pytest
from tornado.httpclient import AsyncHTTPClient

from hubstack.config.models import BinderSettings
from hubstack.launch.form import REPOSITORY_WARNING, source_facts
from hubstack.launch.repo import repo_source, share_links
from hubstack.services.binder import (
    PHASES,
    content_security_policy,
    public_origin,
    render,
    split_spec,
)
from hubstack.services.relay import (
    EventParser,
    HubClient,
    HubError,
    binder_event,
    describe,
    failed_event,
    ready_event,
    runs,
    sse,
)

BINDER = BinderSettings(
    allowed_hosts=["github.com", "gitlab.com", "127.0.0.1:*"], allowed_schemes=["https", "git"]
)
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SERVICE = "https://hub.example.org/services/binder/"


def page_context(**extra: object) -> dict[str, object]:
    return {
        "nonce": "n0nce",
        "prefix": "/services/binder/",
        "hub_home": "/hub/home",
        "user": "ada",
    } | extra


def test_an_event_is_one_data_line_and_reads_back() -> None:
    event = {"phase": "building", "message": "line one\nline two\n", "x": "é"}
    text = sse(event)
    assert text.startswith("data: ") and text.endswith("\n\n")
    assert text.count("\n") == 2, "a message's line breaks stay inside the JSON"
    assert EventParser().feed(text.encode()) == [event]


def test_the_parser_takes_chunks_cut_anywhere() -> None:
    stream = (
        b"\n\n"  # JupyterHub's keepalive
        + sse({"progress": 10, "message": "caf\u00e9"}).encode()
        + b":keepalive\r\n\r\n"
        + b'data: {"a":\r\ndata: 1}\r\n\r\n'  # one event on two data lines
        + b"data: not json\n\n"
        + b"data: [1, 2]\n\n"
        + b'event: other\ndata: {"ready": true}\n\n'
        + b'data: {"unfinished": true}'
    )
    parser = EventParser()
    events = [
        event for byte in range(len(stream)) for event in parser.feed(stream[byte : byte + 1])
    ]
    assert events == [{"progress": 10, "message": "café"}, {"a": 1}, {"ready": True}]


@pytest.mark.parametrize(
    ("hub_event", "phase"),
    [
        ({"phase": "fetching", "message": "Fetching"}, "fetching"),
        ({"phase": "building", "message": "Collecting six"}, "building"),
        ({"phase": "built", "message": "env"}, "built"),
        ({"phase": "launching", "message": "Starting"}, "launching"),
        ({"progress": 50, "message": "Server requested"}, "launching"),
        ({"phase": "ready", "message": "not the spawner's to say"}, "launching"),
        ({"phase": "failed", "message": "nor this"}, "launching"),
        ({"phase": ["building"], "message": "odd"}, "launching"),
    ],
)
def test_hub_events_keep_the_spawners_phase_else_launching(
    hub_event: dict[str, object], phase: str
) -> None:
    event = binder_event(hub_event)
    assert event["phase"] == phase
    assert event["message"] == f"{hub_event['message']}\n", "one line per event"


def test_a_failed_start_is_a_failed_event_with_the_hubs_message() -> None:
    event = binder_event({"failed": True, "progress": 100, "message": "Spawn failed: no conda"})
    assert event == {"phase": "failed", "message": "Spawn failed: no conda\n"}
    assert binder_event({"failed": True})["message"] == "The server failed to start.\n"
    assert failed_event("refused", 400) == {
        "phase": "failed",
        "message": "refused\n",
        "status_code": 400,
    }


def test_ready_names_the_server_the_token_and_the_pinned_request() -> None:
    source = repo_source("https://github.com/org/repo", "main", BINDER)
    event = ready_event(
        source,
        server_url="https://hub.example.org/user/ada/repo-abc123/",
        token="secret",
        commit=COMMIT,
        service_url=SERVICE,
    )
    assert event == {
        "phase": "ready",
        "message": "Server ready at https://hub.example.org/user/ada/repo-abc123/\n",
        "url": "https://hub.example.org/user/ada/repo-abc123/",
        "token": "secret",
        "repo_url": "https://github.com/org/repo",
        "binder_launch_host": SERVICE,
        "binder_request": "v2/gh/org/repo/main",
        "binder_persistent_request": f"v2/gh/org/repo/{COMMIT}",
        "binder_ref_url": f"https://github.com/org/repo/tree/{COMMIT}",
    }


def test_ready_for_other_forges_and_without_a_known_commit() -> None:
    gitlab = repo_source("https://gitlab.com/group/sub/repo", "v1", BINDER)
    event = ready_event(gitlab, server_url="u", token="t", commit=COMMIT, service_url=SERVICE)
    assert event["binder_ref_url"] == f"https://gitlab.com/group/sub/repo/-/tree/{COMMIT}"
    assert event["binder_request"] == f"v2/gl/{gitlab.spec}"
    assert event["binder_persistent_request"] == event["binder_request"].replace(
        "/v1", f"/{COMMIT}"
    )

    plain = repo_source("git://127.0.0.1:9419/tools.git", "feature/x", BINDER)
    event = ready_event(plain, server_url="u", token="t", commit=None, service_url=SERVICE)
    assert "binder_ref_url" not in event
    request = "v2/git/git%3A%2F%2F127.0.0.1%3A9419%2Ftools.git/feature/x"
    assert event["binder_request"] == event["binder_persistent_request"] == request


def test_a_server_runs_a_source_only_with_the_same_repository_and_ref() -> None:
    source = repo_source("https://github.com/org/repo", "main", BINDER)
    same = {"environment": "repository", "repo": source.url, "ref": "main", "commit": COMMIT}
    assert runs({"user_options": same}, source)
    assert not runs({"user_options": {**same, "ref": "dev"}}, source)
    assert not runs({"user_options": {"environment": "python"}}, source)
    assert not runs({"user_options": None}, source)
    assert describe({"user_options": {**same, "ref": "dev"}}) == (
        "'https://github.com/org/repo' at 'dev'"
    )
    assert describe({"user_options": {"environment": "python"}}) == "another environment"


@pytest.mark.parametrize(
    ("headers", "origin"),
    [
        ({"Host": "127.0.0.1:8000"}, "http://127.0.0.1:8000"),
        (
            {"Host": "127.0.0.1:8000", "X-Forwarded-Proto": "https,http"},
            "https://127.0.0.1:8000",
        ),
        (
            {"Host": "10.0.0.5:8000", "X-Forwarded-Host": "hub.example.org, 10.0.0.5:8000"},
            "http://hub.example.org",
        ),
        ({"Host": "[::1]:8000"}, "http://[::1]:8000"),
        (
            {"Host": "hub.example.org", "X-Forwarded-Host": "evil.example/path"},
            "http://hub.example.org",
        ),
        ({"Host": "a@evil.example"}, "http://127.0.0.1:8000"),
        ({"Host": "x", "X-Forwarded-Proto": "javascript"}, "http://x"),
        ({}, "http://127.0.0.1:8000"),
    ],
)
def test_the_public_origin_is_a_plain_host_from_the_headers(
    headers: dict[str, str], origin: str
) -> None:
    assert public_origin(headers, "127.0.0.1:8000") == origin


def test_the_spec_is_read_from_the_raw_path() -> None:
    prefix = "/services/binder/v2/"
    assert split_spec(f"{prefix}gh/org/repo/feature/x", prefix) == ("gh", "org/repo/feature/x")
    assert split_spec(f"{prefix}git/https%3A%2F%2Fh%2Fr/main", prefix) == (
        "git",
        "https%3A%2F%2Fh%2Fr/main",
    )
    assert split_spec(f"{prefix}gh", prefix) == ("gh", "")


def test_the_launch_page_shows_the_share_link_and_badges() -> None:
    source = repo_source("git://127.0.0.1:9419/tools.git", "v1.0", BINDER)
    links = share_links(SERVICE, source, "lab/tree/intro.ipynb")
    page = render(
        "launch.html",
        **page_context(
            form={"repo": source.url, "ref": "v1.0", "path": "intro.ipynb", "pathtype": "file"},
            error=None,
            links=links,
            source=source,
            facts=source_facts(source),
            warning=REPOSITORY_WARNING,
            launch_url="/services/binder/v2/git/x/v1.0",
            xsrf="t0ken",
            server="tools-abc123",
        ),
    )
    shown = html.unescape(page)
    assert f'value="{links.url}"' in shown
    assert '<form method="post" action="/services/binder/v2/git/x/v1.0"' in page
    assert '<input type="hidden" name="_xsrf" value="t0ken">' in page
    assert "<dt>Host</dt><dd><code>127.0.0.1:9419</code></dd>" in page
    assert REPOSITORY_WARNING in shown
    assert f">{links.markdown}</textarea>" in shown
    assert f">{links.rst}</textarea>" in shown
    assert '<option value="file" selected>' in page
    assert page.count('nonce="n0nce"') == 2, "the style and the script, nothing else inline"


def test_the_launch_page_escapes_what_the_user_sent() -> None:
    page = render(
        "launch.html",
        **page_context(
            form={"repo": '"><script>x()</script>', "ref": "<b>", "path": "", "pathtype": "url"},
            error="The ref '<b>' is not allowed.",
            links=None,
        ),
    )
    assert "<script>x()" not in page and "<b>" not in page
    assert 'value="&#34;&gt;&lt;script&gt;x()&lt;/script&gt;"' in page
    assert "The ref &#39;&lt;b&gt;&#39; is not allowed." in page
    assert '<option value="url" selected>' in page


def test_the_share_link_page_follows_the_build_stream() -> None:
    source = repo_source("https://github.com/org/repo", "main", BINDER)
    page = render(
        "v2.html",
        **page_context(
            source=source,
            server="repo-abc123",
            phases=PHASES,
            build_url="/services/binder/build/gh/org/repo/main?_xsrf=a&b",
            urlpath='lab/tree/a"b.ipynb',
            links=share_links(SERVICE, source, None),
        ),
    )
    assert 'data-build-url="/services/binder/build/gh/org/repo/main?_xsrf=a&amp;b"' in page
    assert 'data-urlpath="lab/tree/a&#34;b.ipynb"' in page
    for phase, label, _ in PHASES:
        assert f'data-phase="{phase}"' in page and f">{label}</li>" in page
    assert "new EventSource(launch.dataset.buildUrl)" in page
    assert ".innerHTML" not in page, "stream text is only ever set as text"


def test_pages_allow_only_their_own_inline_code() -> None:
    policy = content_security_policy("abc")
    assert "default-src 'none'" in policy
    assert "script-src 'nonce-abc'" in policy and "style-src 'nonce-abc'" in policy
    assert "connect-src 'self'" in policy and "form-action 'self'" in policy


def test_a_hub_that_does_not_answer_is_a_hub_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        hub = HubClient(
            f"http://127.0.0.1:{port}/hub/api", "token", AsyncHTTPClient(force_instance=True)
        )
        with pytest.raises(HubError) as refused:
            asyncio.run(hub.server("ada", "repo-abc123"))
    assert refused.value.status == 502
    assert refused.value.message.startswith("The hub did not answer:")
