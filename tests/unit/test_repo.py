"""Repository launches: which URLs, refs, specs and paths are accepted, the server name a
repository gets, and the share links and badges."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from jupyterhub.slugs import is_valid_safe_slug

from hubstack.config.models import BinderSettings
from hubstack.launch import (
    NAME_RE,
    InvalidLaunch,
    RepoSource,
    check_ref,
    repo_source,
    server_name,
    server_path,
    share_links,
    source_from_spec,
)

DEFAULT = BinderSettings()
WIDE = BinderSettings(
    allowed_hosts=["github.com", "gitlab.com", "*.example.org", "git.local:*", "forge.test:8443"],
    allowed_schemes=["https", "http", "git"],
)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def refused(call, *args: object) -> str:
    with pytest.raises(InvalidLaunch) as caught:
        call(*args)
    return caught.value.message


# --- URLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "provider", "canonical"),
    [
        ("https://github.com/org/repo", "gh", "https://github.com/org/repo"),
        ("https://github.com/org/repo/", "gh", "https://github.com/org/repo"),
        ("HTTPS://GitHub.COM/Org/Repo", "gh", "https://github.com/Org/Repo"),
        ("https://github.com:443/org/repo", "gh", "https://github.com/org/repo"),
        ("https://github.com/org/repo.git", "gh", "https://github.com/org/repo.git"),
        ("https://github.com/org/repo/tree/main", "git", "https://github.com/org/repo/tree/main"),
        ("https://gitlab.com/group/project", "gl", "https://gitlab.com/group/project.git"),
        ("https://gitlab.com/g/sub/project.git", "gl", "https://gitlab.com/g/sub/project.git"),
        ("https://codeberg.org/org/my_repo.v2", "git", "https://codeberg.org/org/my_repo.v2"),
        ("https://bitbucket.org/~user/repo+x", "git", "https://bitbucket.org/~user/repo+x"),
    ],
)
def test_allowed_urls_are_canonical(url: str, provider: str, canonical: str) -> None:
    source = repo_source(url, "main", DEFAULT)
    assert source == RepoSource(provider, canonical, "main")


def test_ref_defaults_to_head() -> None:
    assert repo_source("https://github.com/org/repo", None, DEFAULT).ref == "HEAD"
    assert repo_source("https://github.com/org/repo", "", DEFAULT).ref == "HEAD"


def test_a_commit_is_a_ref() -> None:
    assert repo_source("https://github.com/org/repo", COMMIT, DEFAULT).ref == COMMIT


@pytest.mark.parametrize(
    "url",
    [
        "ext::sh -c touch% /tmp/pwned",
        "ext::sh%20-c%20id",
        "EXT::sh",
        "fd::17",
        "file:///etc",
        "FILE:///etc/passwd",
        "file://localhost/srv/repo",
        "/local/path",
        "./repo",
        "../repo",
        "~/repo",
        "C:\\repos\\x",
        "ssh://git@github.com/org/repo",
        "git+ssh://github.com/org/repo",
        "git@github.com:org/repo.git",
        "github.com:org/repo",
        "github.com/org/repo",
        "-uhttps://github.com/org/repo",
        "--upload-pack=touch /tmp/x",
        "ftp://github.com/org/repo",
        "javascript:alert(1)",
    ],
)
def test_other_transports_and_local_paths_are_refused(url: str) -> None:
    message = refused(repo_source, url, "main", DEFAULT)
    assert "Allowed: https://" in message or "allowed: https://" in message


def test_remote_helper_and_local_path_messages_say_why() -> None:
    assert "remote helpers" in refused(repo_source, "ext::sh%20-c%20id", None, DEFAULT)
    assert "local paths" in refused(repo_source, "/local/path", None, DEFAULT)
    assert "ssh addresses" in refused(repo_source, "git@github.com:org/repo", None, DEFAULT)
    message = refused(repo_source, "ssh://github.com/org/repo", None, DEFAULT)
    assert (
        message == "Repository URLs starting with 'ssh://' are not allowed here. Allowed: https://."
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pass@github.com/org/repo",
        "https://token@github.com/org/repo",
        "https://:@github.com/org/repo",
        "https://github.com@evil.example/org/repo",
    ],
)
def test_credentials_are_refused(url: str) -> None:
    assert "user name or password" in refused(repo_source, url, None, DEFAULT)


@pytest.mark.parametrize("scheme", ["http", "git"])
def test_http_and_git_only_when_listed(scheme: str) -> None:
    url = f"{scheme}://github.com/org/repo"
    message = refused(repo_source, url, None, DEFAULT)
    assert message == (
        f"Repository URLs starting with '{scheme}://' are not allowed here. Allowed: https://."
    )
    listed = BinderSettings(allowed_schemes=["https", scheme])
    assert repo_source(url, None, listed).url == url
    assert repo_source(url, None, listed).provider == "git"


def test_default_ports_are_dropped_per_scheme() -> None:
    assert repo_source("http://github.com:80/o/r", None, WIDE).url == "http://github.com/o/r"
    assert repo_source("git://github.com:9418/o/r", None, WIDE).url == "git://github.com/o/r"
    # 443 is not git's default port: a plain host pattern does not allow it.
    assert "'github.com:443'" in refused(repo_source, "git://github.com:443/o/r", None, WIDE)


def test_host_not_allowed() -> None:
    message = refused(repo_source, "https://evil.example/org/repo", None, DEFAULT)
    assert message == (
        "Repositories from host 'evil.example' are not allowed here. Allowed hosts: "
        "github.com, gitlab.com, bitbucket.org, codeberg.org."
    )


def test_no_hosts_allowed() -> None:
    message = refused(repo_source, "https://github.com/o/r", None, BinderSettings(allowed_hosts=[]))
    assert "disabled" in message


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com.evil.example/org/repo",
        "https://evilgithub.com/org/repo",
        "https://github.com:8443/org/repo",
        "https://example.org/org/repo",  # *.example.org needs a subdomain
        "https://a.example.org.evil/org/repo",
        "https://forge.test/org/repo",  # only :8443 is allowed there
        "https://forge.test:8444/org/repo",
    ],
)
def test_host_and_port_must_match_a_pattern(url: str) -> None:
    assert "are not allowed here. Allowed hosts:" in refused(repo_source, url, None, WIDE)


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("https://a.example.org/org/repo", "https://a.example.org/org/repo"),
        ("https://A.B.Example.org/r", "https://a.b.example.org/r"),
        ("https://git.local:1/r", "https://git.local:1/r"),
        ("https://git.local:65535/r", "https://git.local:65535/r"),
        ("git://git.local:9000/r.git", "git://git.local:9000/r.git"),
        ("https://git.local/r", "https://git.local/r"),
        ("https://forge.test:8443/org/repo", "https://forge.test:8443/org/repo"),
    ],
)
def test_wildcard_hosts_and_ports(url: str, canonical: str) -> None:
    assert repo_source(url, None, WIDE).url == canonical


@pytest.mark.parametrize(
    "url",
    [
        "https://git.local:0/r",
        "https://git.local:65536/r",
        "https://git.local:99999/r",
        "https://git.local:/r",
        "https://git.local:x/r",
        "https:///org/repo",
        "https://-bad.example.org/r",
        "https://a..example.org/r",
        "https://github.com./org/repo",
        "https://[::1]/r",
        "https://gith\u00fcb.com/org/repo",
    ],
)
def test_bad_hosts_and_ports_are_refused(url: str) -> None:
    refused(repo_source, url, None, WIDE)


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/org/repo\n",
        "https://github.com/org/repo\r\nHost: evil",
        " https://github.com/org/repo",
        "https://github.com/org/my repo",
        "https://github.com/org/repo\t",
        "https://github.com/org/repo\x00",
        "https://github.com/org/re\u202epo",
    ],
)
def test_whitespace_and_control_characters_in_urls_are_refused(url: str) -> None:
    message = refused(repo_source, url, None, DEFAULT)
    assert "spaces, control or non-ASCII characters" in message
    assert "\n" not in message and "\r" not in message and "\x00" not in message


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com",
        "https://github.com/",
        "https://github.com/org/../other",
        "https://github.com/org/./repo",
        "https://github.com/../repo",
        "https://github.com/org//repo",
        "https://github.com/org/repo?x=1",
        "https://github.com/org/repo#main",
        "https://github.com/org/re%2e%2epo",
        "https://github.com/org/repo;x",
        "https://github.com/org\\repo",
    ],
)
def test_bad_paths_are_refused(url: str) -> None:
    refused(repo_source, url, None, DEFAULT)


@pytest.mark.parametrize("url", [None, 42, ["https://github.com/o/r"], ""])
def test_url_must_be_text(url: object) -> None:
    refused(repo_source, url, None, DEFAULT)


def test_long_url_is_refused_and_echo_is_cut() -> None:
    message = refused(repo_source, "https://evil.example/" + "a" * 3000, None, DEFAULT)
    assert len(message) < 200


# --- refs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    ["main", "HEAD", "v1.0", "feature/x", "release/2024/q1", COMMIT, "a-b_c", "caf\u00e9", "x#y"],
)
def test_allowed_refs(ref: str) -> None:
    assert check_ref(ref) == ref
    assert repo_source("https://github.com/o/r", ref, DEFAULT).ref == ref


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("-x", "starts with '-'"),
        ("--upload-pack=touch", "starts with '-'"),
        ("main\n", "spaces or control characters"),
        ("ma in", "spaces or control characters"),
        ("main\t", "spaces or control characters"),
        ("\x00", "spaces or control characters"),
        ("a\u202eb", "spaces or control characters"),
        ("a\u00a0b", "spaces or control characters"),
        ("a..b", "'..'"),
        ("../../etc", "'..'"),
        ("main@{1}", "'@{'"),
        ("a\\b", "'\\\\'"),
        ("a:b", "':'"),
        ("a?", "'?'"),
        ("a*", "'*'"),
        ("a[b", "'['"),
        ("HEAD~1", "'~'"),
        ("HEAD^", "'^'"),
        ("main/", "ends with '/'"),
        ("main.", "ends with '.'"),
        ("/main", "empty part"),
        ("a//b", "empty part"),
        ("a.lock", "ends with '.lock'"),
        ("a.lock/b", "ends with '.lock'"),
        (".hidden", "starts with '.'"),
        ("a/.b", "starts with '.'"),
        ("@", "'@' alone"),
        ("a" * 256, "longer than 255"),
        ("", "empty"),
    ],
)
def test_bad_refs_are_refused(ref: str, reason: str) -> None:
    message = refused(check_ref, ref)
    assert reason in message
    assert "Give a branch, tag or commit" in message


def test_bad_ref_through_repo_source() -> None:
    assert "starts with '-'" in refused(repo_source, "https://github.com/o/r", "-x", DEFAULT)
    assert "as text, not a number" in refused(repo_source, "https://github.com/o/r", 1, DEFAULT)


def test_ref_of_255_characters_is_allowed() -> None:
    assert check_ref("a" * 255) == "a" * 255


# --- specs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "spec", "expected"),
    [
        ("gh", "org/repo/main", RepoSource("gh", "https://github.com/org/repo", "main")),
        ("gh", "org/repo/feature/x", RepoSource("gh", "https://github.com/org/repo", "feature/x")),
        (
            "gh",
            "org/repo/feature%2Fx",
            RepoSource("gh", "https://github.com/org/repo", "feature/x"),
        ),
        ("gh", "org/repo.git/HEAD", RepoSource("gh", "https://github.com/org/repo.git", "HEAD")),
        ("gh", f"org/repo/{COMMIT}", RepoSource("gh", "https://github.com/org/repo", COMMIT)),
        ("gh", "org/repo", RepoSource("gh", "https://github.com/org/repo", "HEAD")),
        ("gh", "org/repo/", RepoSource("gh", "https://github.com/org/repo", "HEAD")),
        (
            "gl",
            "group%2Fproject/main",
            RepoSource("gl", "https://gitlab.com/group/project.git", "main"),
        ),
        (
            "gl",
            "group%2Fsub%2Fproject/v1/x",
            RepoSource("gl", "https://gitlab.com/group/sub/project.git", "v1/x"),
        ),
        ("gl", "group%2fproject", RepoSource("gl", "https://gitlab.com/group/project.git", "HEAD")),
        (
            "git",
            "https%3A%2F%2Fcodeberg.org%2Forg%2Frepo.git/main",
            RepoSource("git", "https://codeberg.org/org/repo.git", "main"),
        ),
        (
            "git",
            "https%3A%2F%2Fgithub.com%2Forg%2Frepo/release%2F1",
            RepoSource("git", "https://github.com/org/repo", "release/1"),
        ),
        (
            "git",
            "HTTPS%3A%2F%2FGitLab.com%2Fa%2Fb%2F/dev",
            RepoSource("git", "https://gitlab.com/a/b", "dev"),
        ),
    ],
)
def test_specs(provider: str, spec: str, expected: RepoSource) -> None:
    assert source_from_spec(provider, spec, DEFAULT) == expected


def test_git_spec_on_a_local_server() -> None:
    binder = BinderSettings(allowed_hosts=["127.0.0.1:*"], allowed_schemes=["git", "http"])
    source = source_from_spec("git", "git%3A%2F%2F127.0.0.1%3A9418%2Frepo/main", binder)
    assert source == RepoSource("git", "git://127.0.0.1/repo", "main")
    source = source_from_spec("git", "http%3A%2F%2F127.0.0.1%3A8080%2Frepo.git", binder)
    assert source == RepoSource("git", "http://127.0.0.1:8080/repo.git", "HEAD")


@pytest.mark.parametrize("provider", ["gist", "zenodo", "GH", "", None, 1])
def test_unknown_provider(provider: object) -> None:
    message = refused(source_from_spec, provider, "org/repo/main", DEFAULT)
    assert "gh, gl, git" in message


@pytest.mark.parametrize(
    ("provider", "spec", "part"),
    [
        ("gh", "", "1 to 4000"),
        ("gh", "org", "of the form <org>/<repo>/<ref>"),
        ("gh", "/repo/main", "of the form <org>/<repo>/<ref>"),
        ("gh", "org%2Frepo/main", "of the form <org>/<repo>/<ref>"),
        ("gh", "org/re po/main", "of the form <org>/<repo>/<ref>"),
        ("gh", "../../etc/main", "'.' or '..' parts"),
        ("gh", "org/repo/-x", "starts with '-'"),
        ("gh", "org/repo/%2Dx", "starts with '-'"),
        ("gh", "org/repo/ma%0Ain", "spaces or control characters"),
        ("gh", "org/repo/a..b", "'..'"),
        ("gl", "group/project/main", "<url-escaped namespace>/<ref>"),
        ("gl", "project/main", "<url-escaped namespace>/<ref>"),
        ("gl", "https%3A%2F%2Fevil.example%2Fx/main", "<url-escaped namespace>/<ref>"),
        ("gl", "group%2F..%2F..%2Fx/main", "'.' or '..' parts"),
        ("gl", "g%2Fp%3Fx%3D1/main", "query"),
        ("git", "https://github.com/org/repo/main", "<url-escaped clone URL>/<ref>"),
        ("git", "github.com%2Forg%2Frepo/main", "<url-escaped clone URL>/<ref>"),
        ("git", "file%3A%2F%2F%2Fetc/main", "'file://' are not allowed"),
        ("git", "ext%3A%3Ash%20-c%20id/main", "spaces, control"),
        ("git", "ext%3A%3Ash/main", "remote helpers"),
        ("git", "%2Flocal%2Fpath/main", "local paths"),
        ("git", "git%40github.com%3Aorg%2Frepo/main", "ssh addresses"),
        ("git", "ssh%3A%2F%2Fgithub.com%2Fo%2Fr/main", "'ssh://' are not allowed"),
        ("git", "https%3A%2F%2Fu%3Ap%40github.com%2Fo%2Fr/main", "user name or password"),
        ("git", "https%3A%2F%2Fevil.example%2Fo%2Fr/main", "host 'evil.example'"),
        ("git", "http%3A%2F%2Fgithub.com%2Fo%2Fr/main", "'http://' are not allowed"),
    ],
)
def test_bad_specs(provider: str, spec: str, part: str) -> None:
    assert part in refused(source_from_spec, provider, spec, DEFAULT)


def test_gh_spec_needs_github_allowed() -> None:
    binder = BinderSettings(allowed_hosts=["gitlab.com"])
    assert "host 'github.com'" in refused(source_from_spec, "gh", "org/repo/main", binder)


def test_spec_must_be_text() -> None:
    assert "text, not null" in refused(source_from_spec, "gh", None, DEFAULT)


@pytest.mark.parametrize(
    ("url", "ref", "spec"),
    [
        ("https://github.com/org/repo", "main", "org/repo/main"),
        ("https://github.com/org/repo", "feature/x y", None),
        ("https://github.com/org/repo", "a#b%c&d", "org/repo/a%23b%25c%26d"),
        ("https://gitlab.com/group/sub/p", "v1/x", "group%2Fsub%2Fp.git/v1/x"),
        ("https://codeberg.org/o/r.git", "main", "https%3A%2F%2Fcodeberg.org%2Fo%2Fr.git/main"),
    ],
)
def test_spec_round_trip(url: str, ref: str, spec: str | None) -> None:
    if spec is None:  # refs git refuses never get a spec
        refused(repo_source, url, ref, DEFAULT)
        return
    source = repo_source(url, ref, DEFAULT)
    assert source.spec == spec
    assert source_from_spec(source.provider, source.spec, DEFAULT) == source


# --- names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://github.com/org/repo", "repo"),
        ("https://github.com/org/repo.git", "repo"),
        ("https://github.com/org/My.Repo_v2", "My.Repo_v2"),
        ("https://gitlab.com/g/sub/project", "project"),
        ("https://github.com/org/.hidden", "hidden"),
        ("https://github.com/org/.git", "repo"),
        ("https://github.com/org/...x", "x"),
        ("https://bitbucket.org/~user/a+b~c", "a_b_c"),
    ],
)
def test_directory_name(url: str, name: str) -> None:
    source = repo_source(url, None, DEFAULT)
    assert source.name == name
    assert re.fullmatch(r"[A-Za-z0-9._-]+", source.name) and not source.name.startswith(".")


ODD_URLS = [
    "https://github.com/org/repo",
    "https://github.com/org/Repo",
    "https://github.com/other/repo",
    "https://github.com/org/repo.git",
    "https://github.com/org/" + "very-long-repository-name" * 8,
    "https://github.com/org/" + "very-long-repository-name" * 8 + "x",
    "https://github.com/org/2024_course",
    "https://github.com/org/123",
    "https://github.com/org/---",
    "https://github.com/org/.git",
    "https://github.com/org/_.~+-",
    "https://github.com/org/A__B..C",
    "https://gitlab.com/g/sub/default",
    "https://github.com/org/Default",
]


@pytest.mark.parametrize("max_length", [1, 2, 7, 8, 9, 12, 20, 30])
def test_server_names_follow_the_rule(max_length: int) -> None:
    for url in ODD_URLS:
        name = server_name(repo_source(url, None, DEFAULT), max_length)
        assert len(name) <= max_length
        assert NAME_RE.match(name), name
        assert is_valid_safe_slug(name), name
        assert name != "default"


@pytest.mark.parametrize("max_length", [8, 12, 20, 30])
def test_server_names_are_distinct_for_distinct_urls(max_length: int) -> None:
    names = {server_name(repo_source(url, None, DEFAULT), max_length) for url in ODD_URLS}
    assert len(names) == len(ODD_URLS)


def test_server_name_is_stable_and_readable() -> None:
    first = repo_source("https://github.com/org/My_Repo", "main", DEFAULT)
    again = repo_source("HTTPS://GITHUB.COM/org/My_Repo/", COMMIT, DEFAULT)
    via_spec = source_from_spec("git", "https%3A%2F%2Fgithub.com%2Forg%2FMy_Repo/dev", DEFAULT)
    assert server_name(first, 20) == server_name(again, 20) == server_name(via_spec, 20)
    assert re.fullmatch(r"my-repo-[a-z0-9]{6}", server_name(first, 20))
    assert server_name(first, 20).startswith(server_name(first, 12)[:4])


def test_server_name_of_digits_only_repository() -> None:
    name = server_name(repo_source("https://github.com/org/123", None, DEFAULT), 20)
    assert re.fullmatch(r"repo-[a-z0-9]{6}", name)


def test_server_name_needs_room() -> None:
    with pytest.raises(ValueError):
        server_name(repo_source("https://github.com/o/r", None, DEFAULT), 0)


# --- paths --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("urlpath", "labpath", "filepath", "path"),
    [
        (None, None, None, ""),
        ("", "", "", ""),
        ("lab", None, None, "lab"),
        ("lab/tree/notebooks/intro.ipynb", None, None, "lab/tree/notebooks/intro.ipynb"),
        (
            "git-pull?repo=https://x.org/a&urlpath=lab",
            None,
            None,
            "git-pull?repo=https://x.org/a&urlpath=lab",
        ),
        ("lab/tree/my notebook.ipynb", None, None, "lab/tree/my%20notebook.ipynb"),
        ("lab/tree/caf%C3%A9.ipynb", None, None, "lab/tree/caf%C3%A9.ipynb"),
        ("voila/render/a.ipynb", "b.ipynb", "c.ipynb", "voila/render/a.ipynb"),
        (None, "notebooks/intro.ipynb", None, "lab/tree/notebooks/intro.ipynb"),
        (None, "notebooks/", None, "lab/tree/notebooks"),
        (None, "my notebook#1?.ipynb", None, "lab/tree/my%20notebook%231%3F.ipynb"),
        (None, "a:b.ipynb/../x", None, None),
        (None, "intro.ipynb", "other.ipynb", "lab/tree/intro.ipynb"),
        (None, None, "notebooks/intro.ipynb", "tree/notebooks/intro.ipynb"),
        (None, None, "caf\u00e9.ipynb", "tree/caf%C3%A9.ipynb"),
        (None, None, "data/%2e%2e.csv", "tree/data/%252e%252e.csv"),
    ],
)
def test_server_path(
    urlpath: str | None, labpath: str | None, filepath: str | None, path: str | None
) -> None:
    if path is None:
        refused(server_path, urlpath, labpath, filepath)
    else:
        assert server_path(urlpath, labpath, filepath) == path


BAD_PATHS = [
    "..",
    "../x",
    "lab/../../hub/admin",
    "a/..",
    "//evil.com",
    "//evil.com/x",
    "/abs",
    "/",
    "https://evil.com",
    "HTTPS://evil.com/x",
    "javascript:alert(1)",
    "JavaScript:alert(1)",
    "data:text/html,x",
    "mailto:x@example.org",
    "lab\\..\\x",
    "\\\\evil.com",
    "lab/tree/x\nSet-Cookie: a=b",
    "lab\r\n",
    "lab\x00",
    "lab\x7f",
    "a\u202eb",
    "a\u2028b",
    "x" * 2001,
]


@pytest.mark.parametrize("position", [0, 1, 2])
@pytest.mark.parametrize("bad", BAD_PATHS)
def test_bad_paths_are_refused_in_every_parameter(position: int, bad: str) -> None:
    args: list[str | None] = [None, None, None]
    args[position] = bad
    message = refused(server_path, *args)
    assert ["urlpath", "labpath", "filepath"][position] in message
    assert "\n" not in message and "\r" not in message


@pytest.mark.parametrize(
    "urlpath",
    ["%2F%2Fevil.com", "%2fabs", "lab/%2e%2e/%2E%2E/hub", "lab/%2e%2E", "a%5Cb", "x%0d%0ay"],
)
def test_escaped_escapes_in_urlpath_are_refused(urlpath: str) -> None:
    refused(server_path, urlpath, None, None)


def test_an_unused_bad_path_is_still_refused() -> None:
    assert "labpath" in refused(server_path, "lab", "../x", None)
    assert "filepath" in refused(server_path, None, "a.ipynb", "//evil.com")


def test_dots_in_query_of_urlpath_are_allowed() -> None:
    assert server_path("git-pull?x=../a", None, None) == "git-pull?x=../a"


@pytest.mark.parametrize("value", [1, ["lab"], {"a": 1}, True])
def test_paths_must_be_text(value: object) -> None:
    assert "must be text" in refused(server_path, value, None, None)


# --- share links --------------------------------------------------------------------------


def test_share_link_and_badges_for_github() -> None:
    source = repo_source("https://github.com/org/repo", "main", DEFAULT)
    links = share_links("https://hub.example.org/services/binder/", source, "")
    url = "https://hub.example.org/services/binder/v2/gh/org/repo/main"
    badge = "https://hub.example.org/services/binder/badge_logo.svg"
    assert links.url == url
    assert links.markdown == f"[![Binder]({badge})]({url})"
    assert links.rst == f".. image:: {badge}\n   :target: {url}"


def test_share_link_adds_a_missing_slash() -> None:
    source = repo_source("https://gitlab.com/g/p", None, DEFAULT)
    links = share_links("https://hub.example.org/services/binder", source, None)
    assert links.url == "https://hub.example.org/services/binder/v2/gl/g%2Fp.git/HEAD"
    assert "(https://hub.example.org/services/binder/badge_logo.svg)" in links.markdown


def test_share_link_escapes_spec_and_urlpath() -> None:
    source = repo_source("https://codeberg.org/o/r.git", "a#b(c)&d", DEFAULT)
    urlpath = "lab/tree/my notebook (1).ipynb?x=1&y=)"
    links = share_links("https://hub.example.org/b/", source, urlpath)
    parts = urlsplit(links.url)
    assert parts.path == "/b/v2/git/https%3A%2F%2Fcodeberg.org%2Fo%2Fr.git/a%23b%28c%29%26d"
    assert parse_qs(parts.query) == {"urlpath": [urlpath]}
    assert parts.fragment == ""
    for text in (links.url, links.markdown.split("](", 2)[2][:-1]):
        assert not set(text) & set(" ()[]<>\"'\n`")
    assert links.markdown.count("(") == 2 and links.markdown.count(")") == 2
    assert links.rst.count("\n") == 1
    spec = unquote(parts.path.split("/v2/git/", 1)[1], errors="strict")
    assert spec == "https://codeberg.org/o/r.git/a#b(c)&d"
    provider, raw_spec = parts.path.split("/v2/", 1)[1].split("/", 1)
    assert source_from_spec(provider, raw_spec, DEFAULT) == source


def test_share_link_refuses_bad_urlpath() -> None:
    source = repo_source("https://github.com/org/repo", None, DEFAULT)
    assert "urlpath" in refused(share_links, "https://hub/", source, "//evil.com")


@pytest.mark.parametrize(
    "base_url",
    [
        "hub.example.org/",
        "javascript:alert(1)//",
        "https://hub/x y/",
        "https://hub/)(/",
        "https://hub/\n",
    ],
)
def test_share_link_needs_a_plain_base_url(base_url: str) -> None:
    source = repo_source("https://github.com/org/repo", None, DEFAULT)
    refused(share_links, base_url, source, None)
