"""Resolving, fetching and exporting repositories with real git servers on loopback."""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import stat
import subprocess
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from gitserver import GitHttp, SilentServer, add_commit, branch, make_repo, tag
from hubtest import wait_for

from hubstack.envs import git
from hubstack.envs.git import GitError, export, fetch, resolve_ref
from hubstack.system.accounts import Account

MB = 1024**2
SCHEMES = ("git", "http")


@dataclass
class Server:
    """A running git server and the transports a hub must allow to reach it."""

    base: Path
    url_of: Callable[[str], str]
    schemes: tuple[str, ...]

    def repo(
        self,
        files: dict[str, str | bytes],
        *,
        executable: Collection[str] = (),
        symlinks: dict[str, str] | None = None,
    ) -> tuple[str, Path, str]:
        """A new repository served here: its URL, its working copy and its commit."""
        name = f"repo-{secrets.token_hex(4)}"
        commit = make_repo(self.base / name, files, executable=executable, symlinks=symlinks)
        return self.url_of(name), self.base / name, commit


@pytest.fixture(params=["git_daemon", "git_http"])
def server(request: pytest.FixtureRequest) -> Server:
    """Each test runs against git daemon (git://) and smart HTTP (http://)."""
    running = request.getfixturevalue(request.param)
    scheme = "git" if request.param == "git_daemon" else "http"
    return Server(running.base, running.url, (scheme,))


@pytest.fixture
def account() -> Iterator[Account]:
    """A throwaway unprivileged account, removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("creating accounts needs root")
    name = f"hstest-git-{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--no-create-home", "--home-dir", "/nonexistent", "--user-group", name],
        check=True,
        capture_output=True,
    )
    try:
        entry = pwd.getpwnam(name)
        yield Account(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))
    finally:
        subprocess.run(["userdel", "--force", name], check=False, capture_output=True)


def resolve(url: str, ref: str, schemes: tuple[str, ...] = SCHEMES, timeout: float = 30) -> str:
    return asyncio.run(resolve_ref(url, ref, schemes=schemes, timeout=timeout))


def get(
    url: str,
    ref: str,
    commit: str,
    mirror: Path,
    *,
    schemes: tuple[str, ...] = SCHEMES,
    max_size: int = 10 * MB,
    timeout: float = 30,
    user: Account | None = None,
) -> list[str]:
    """Fetch and return the log lines."""
    lines: list[str] = []
    asyncio.run(
        fetch(
            url,
            ref,
            commit,
            mirror,
            schemes=schemes,
            max_size=max_size,
            timeout=timeout,
            user=user,
            log=lines.append,
        )
    )
    return lines


def write_out(
    mirror: Path, commit: str, dest: Path, user: Account | None = None, **kwargs: int
) -> None:
    asyncio.run(export(mirror, commit, dest, user=user, **kwargs))


def tree(root: Path) -> dict[str, str | bytes]:
    """Every file as its content, every symlink as ``-> target``, every mode noted."""
    found: dict[str, str | bytes] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            found[name] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[name] = path.read_bytes()
            found[f"{name} mode"] = oct(stat.S_IMODE(path.lstat().st_mode))
    return found


FILES: dict[str, str | bytes] = {
    "README.md": "# Demo\n",
    "postBuild": "#!/bin/sh\necho built\n",
    "data/blob.bin": bytes(range(256)),
    "notebooks/intro.ipynb": "{}\n",
}


def test_refs_resolve_like_git_checkout(server: Server) -> None:
    url, path, first = server.repo({"a.txt": "1"})
    tag(path, "v1", annotated=True)
    tag(path, "both")
    feature = branch(path, "feature")
    second = add_commit(path, {"a.txt": "2"})
    tag(path, "light")
    branch(path, "both")

    assert resolve(url, "HEAD") == second
    assert resolve(url, "main") == second
    assert resolve(url, "feature") == feature == first
    assert resolve(url, "v1") == first  # the commit, not the annotated tag object
    assert resolve(url, "light") == second
    assert resolve(url, "both") == second  # a branch wins over a tag of the same name
    assert resolve(url, "refs/tags/both") == first
    assert resolve(url, "refs/heads/main") == second
    assert resolve(url, "0" * 40) == "0" * 40  # full ids are checked when fetched
    assert resolve(url, first.upper()) == first


def test_unknown_ref_and_repository_are_named(server: Server) -> None:
    url, _path, _commit = server.repo({"a.txt": "1"})
    with pytest.raises(GitError) as caught:
        resolve(url, "nope")
    assert caught.value.message == f"Could not resolve 'nope' in {url!r}: no such branch or tag."

    with pytest.raises(GitError) as caught:
        resolve(server.url_of("missing"), "main")
    assert caught.value.message.startswith("Could not read the repository")
    assert "missing" in caught.value.message


def test_fetch_then_export_gives_the_files(server: Server, tmp_path: Path) -> None:
    url, _path, commit = server.repo(
        FILES, executable=["postBuild"], symlinks={"intro": "notebooks/intro.ipynb"}
    )
    mirror = tmp_path / "mirrors/demo.git"
    log = get(url, "main", commit, mirror, schemes=server.schemes)
    assert any("objects" in line for line in log), log  # git's progress reaches the log

    write_out(mirror, commit, tmp_path / "out")
    assert tree(tmp_path / "out") == {
        "README.md": b"# Demo\n",
        "README.md mode": "0o644",
        "data/blob.bin": bytes(range(256)),
        "data/blob.bin mode": "0o644",
        "intro": "-> notebooks/intro.ipynb",
        "notebooks/intro.ipynb": b"{}\n",
        "notebooks/intro.ipynb mode": "0o644",
        "postBuild": b"#!/bin/sh\necho built\n",
        "postBuild mode": "0o755",
    }
    assert os.listdir(mirror.parent) == ["demo.git"]  # no staging directory left


def test_export_ignores_release_attributes(server: Server, tmp_path: Path) -> None:
    """The checkout matches the commit, as a clone would, not a release tarball."""
    files = {".gitattributes": "secret.txt export-ignore\nv.txt export-subst\n"}
    files |= {"secret.txt": "kept\n", "v.txt": "$Format:%H$\n"}
    url, _path, commit = server.repo(files)
    get(url, "main", commit, tmp_path / "m.git", schemes=server.schemes)
    write_out(tmp_path / "m.git", commit, tmp_path / "out")
    assert (tmp_path / "out/secret.txt").read_text() == "kept\n"
    assert (tmp_path / "out/v.txt").read_text() == "$Format:%H$\n"


def test_a_new_commit_is_fetched_into_the_existing_mirror(server: Server, tmp_path: Path) -> None:
    url, path, first = server.repo({"a.txt": "1", "b.txt": "b"})
    mirror = tmp_path / "m.git"
    get(url, "main", first, mirror, schemes=server.schemes)
    second = add_commit(path, {"a.txt": "2", "c.txt": "c"}, removed=["b.txt"])

    get(url, "main", resolve(url, "main"), mirror, schemes=server.schemes)
    write_out(mirror, first, tmp_path / "first")
    write_out(mirror, second, tmp_path / "second")
    assert tree(tmp_path / "first") == {
        "a.txt": b"1",
        "a.txt mode": "0o644",
        "b.txt": b"b",
        "b.txt mode": "0o644",
    }
    assert tree(tmp_path / "second") == {
        "a.txt": b"2",
        "a.txt mode": "0o644",
        "c.txt": b"c",
        "c.txt mode": "0o644",
    }
    assert sorted(os.listdir(tmp_path)) == ["first", "m.git", "second"]
    fsck = subprocess.run(
        ["git", f"--git-dir={mirror}", "fsck", "--no-dangling"], capture_output=True, text=True
    )
    assert fsck.returncode == 0, fsck.stderr


def test_a_fetched_commit_needs_no_server(server: Server, tmp_path: Path) -> None:
    url, _path, commit = server.repo({"a.txt": "1"})
    get(url, "main", commit, tmp_path / "m.git", schemes=server.schemes)
    with SilentServer() as silent:
        log = get(silent.url("x"), "main", commit, tmp_path / "m.git", timeout=5)
    assert log == []


def test_an_empty_repository_exports_an_empty_tree(server: Server, tmp_path: Path) -> None:
    url, _path, commit = server.repo({})
    get(url, "HEAD", resolve(url, "HEAD"), tmp_path / "m.git", schemes=server.schemes)
    write_out(tmp_path / "m.git", commit, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == []


def test_a_commit_the_server_does_not_have(server: Server, tmp_path: Path) -> None:
    url, _path, _commit = server.repo({"a.txt": "1"})
    unknown = "1234567890" * 4
    with pytest.raises(GitError) as caught:
        get(url, unknown, unknown, tmp_path / "m.git", schemes=server.schemes)
    assert caught.value.message == f"Commit 123456789012 is not in the repository {url!r}."
    with pytest.raises(
        GitError, match=r"^Could not fetch the repository .*-missing.*: .*(not found|no such repo)"
    ):
        get(url + "-missing", "main", unknown, tmp_path / "m.git", schemes=server.schemes)
    assert os.listdir(tmp_path) == []


def test_a_repository_over_the_size_limit_is_stopped(server: Server, tmp_path: Path) -> None:
    url, path, small = server.repo({"a.txt": "1"})
    big = add_commit(path, {"big.bin": os.urandom(3 * MB)})  # incompressible
    first = tmp_path / "first.git"
    with pytest.raises(GitError) as caught:
        get(url, "main", big, first, schemes=server.schemes, max_size=MB)
    assert caught.value.message == "The repository is larger than the limit of 1 MB."
    assert os.listdir(tmp_path) == []  # no mirror, no partial fetch

    mirror = tmp_path / "m.git"
    get(url, small, small, mirror, schemes=server.schemes, max_size=MB)
    before = sorted(str(p.relative_to(mirror)) for p in mirror.rglob("*"))
    with pytest.raises(GitError, match="larger than the limit of 1 MB"):
        get(url, "main", big, mirror, schemes=server.schemes, max_size=MB)
    assert sorted(str(p.relative_to(mirror)) for p in mirror.rglob("*")) == before
    assert os.listdir(tmp_path) == ["m.git"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_server_that_hangs_is_given_up_on(scheme: str, tmp_path: Path) -> None:
    with SilentServer() as silent:
        with pytest.raises(GitError) as caught:
            resolve(silent.url("repo", scheme), "main", timeout=2)
        assert caught.value.message == (
            f"Could not read the repository {silent.url('repo', scheme)!r} within 2 s: "
            "the server is too slow or does not answer."
        )
        wait_for(silent.all_closed_by_client, 10, "git to be killed")

    with SilentServer() as silent:
        with pytest.raises(GitError, match="within 2 s"):
            get(silent.url("repo", scheme), "main", "a" * 40, tmp_path / "m.git", timeout=2)
        wait_for(silent.all_closed_by_client, 10, "git to be killed")
    assert os.listdir(tmp_path) == []


def test_a_cancelled_fetch_is_killed_and_leaves_nothing(tmp_path: Path) -> None:
    """A launch given up on (the user left) must not leave git running or a staging dir."""

    async def fetch_then_cancel(silent: SilentServer) -> None:
        task = asyncio.create_task(
            fetch(
                silent.url("repo"),
                "main",
                "a" * 40,
                tmp_path / "m.git",
                schemes=SCHEMES,
                max_size=MB,
                timeout=600,
                user=None,
                log=print,
            )
        )
        await asyncio.to_thread(wait_for, silent.connected, 10, "git to connect")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with SilentServer() as silent:
        asyncio.run(fetch_then_cancel(silent))
        wait_for(silent.all_closed_by_client, 10, "git to be killed")
    assert os.listdir(tmp_path) == []


def test_a_moved_branch_is_reported_on_a_protocol_v0_server(tmp_path: Path) -> None:
    """Old servers only send what a ref points at: fetch the ref, then check the commit."""
    base = tmp_path / "served"
    base.mkdir()
    first = make_repo(base / "r", {"a.txt": "1"})
    tag(base / "r", "v1", annotated=True)
    add_commit(base / "r", {"a.txt": "2"})
    with GitHttp(base, protocol_v2=False) as old:
        log = get(old.url("r"), "v1", first, tmp_path / "m.git")
        assert "The server does not send commits by id; fetching 'v1' instead" in log
        write_out(tmp_path / "m.git", first, tmp_path / "out")
        assert (tmp_path / "out/a.txt").read_text() == "1"

        with pytest.raises(GitError) as caught:
            get(old.url("r"), "main", first, tmp_path / "other.git")
        assert caught.value.message == (
            f"'main' of {old.url('r')!r} no longer points at commit {first[:12]} "
            "(it changed meanwhile, or the commit does not exist); launch again."
        )
    assert not (tmp_path / "other.git").exists()


def test_redirects_are_not_followed(git_http: GitHttp) -> None:
    """An allowed host must not lead git to one that is not allowed."""
    name = f"repo-{secrets.token_hex(4)}"
    make_repo(git_http.base / name, {"a.txt": "1"})
    git_http.redirect(f"{name}-old", git_http.url(name))
    with pytest.raises(GitError, match=r"redirects .* elsewhere, which is not followed"):
        resolve(git_http.url(f"{name}-old"), "main")


@pytest.mark.parametrize(
    "url",
    [
        "ext::sh -c touch% {marker}",
        "https::ext::sh -c touch% {marker}",
        "file://{repo}",
        "{repo}",
        "ssh://127.0.0.1/{repo}",
        "--upload-pack=touch {marker}",
    ],
)
def test_other_transports_are_refused(url: str, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    commit = make_repo(repo, {"a.txt": "1"})
    url = url.format(marker=tmp_path / "marker", repo=repo)
    schemes = ("https", "http", "git")
    with pytest.raises(GitError, match="is not allowed: only git://, http://, https://"):
        asyncio.run(resolve_ref(url, "main", schemes=schemes, timeout=10))
    with pytest.raises(GitError, match="is not allowed"):
        get(url, "main", commit, tmp_path / "m.git", schemes=schemes)
    assert not (tmp_path / "marker").exists()
    assert not (tmp_path / "m.git").exists()


def test_git_itself_refuses_other_transports(tmp_path: Path) -> None:
    """Belt and braces: the environment git runs in forbids them even if a URL got through."""
    repo = tmp_path / "repo"
    make_repo(repo, {"a.txt": "1"})
    for url, transport in [
        (f"ext::sh -c touch% {tmp_path / 'marker'}", "ext"),
        (f"file://{repo}", "file"),
        (str(repo), "file"),
    ]:
        outcome = asyncio.run(
            git._run(["ls-remote", "--", url], schemes=("https",), user=None, timeout=10)
        )
        assert not outcome.ok
        assert outcome.error() == f"transport '{transport}' not allowed"
    assert not (tmp_path / "marker").exists()


def test_only_allowed_schemes_are_used(server: Server, tmp_path: Path) -> None:
    url, _path, commit = server.repo({"a.txt": "1"})
    for schemes in [("https",), tuple({"git", "http"} - set(server.schemes))]:
        with pytest.raises(GitError, match="is not allowed"):
            resolve(url, "main", schemes=schemes)
        with pytest.raises(GitError, match="is not allowed"):
            get(url, "main", commit, tmp_path / "m.git", schemes=schemes)
    assert resolve(url, "main", schemes=server.schemes) == commit


def test_option_like_refs_are_refused(server: Server, tmp_path: Path) -> None:
    url, _path, commit = server.repo({"a.txt": "1"})
    ref = f"--upload-pack=touch {tmp_path / 'marker'}"
    with pytest.raises(GitError, match="is not a branch, tag or commit name"):
        resolve(url, ref)
    with pytest.raises(GitError, match="is not a branch, tag or commit name"):
        get(url, ref, commit, tmp_path / "m.git")
    assert os.listdir(tmp_path) == []


def test_export_refuses_a_tree_over_the_size_limit(server: Server, tmp_path: Path) -> None:
    url, _path, commit = server.repo({"a.bin": b"x" * 3 * MB})  # compresses well
    get(url, "main", commit, tmp_path / "m.git", schemes=server.schemes, max_size=MB)
    with pytest.raises(GitError) as caught:
        write_out(tmp_path / "m.git", commit, tmp_path / "out", max_size=2 * MB)
    assert caught.value.message == "The repository's files take 3 MB, more than the limit of 2 MB."
    assert not (tmp_path / "out").exists()


def test_export_of_a_commit_not_fetched(server: Server, tmp_path: Path) -> None:
    url, path, commit = server.repo({"a.txt": "1"})
    get(url, "main", commit, tmp_path / "m.git", schemes=server.schemes)
    later = add_commit(path, {"a.txt": "2"})
    with pytest.raises(GitError, match=rf"^Commit {later[:12]} has not been fetched"):
        write_out(tmp_path / "m.git", later, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_fetch_and_export_as_an_account(git_http: GitHttp, account: Account, scratch: Path) -> None:
    name = f"repo-{secrets.token_hex(4)}"
    commit = make_repo(
        git_http.base / name, FILES, executable=["postBuild"], symlinks={"intro": "README.md"}
    )
    url = git_http.url(name)
    out = scratch / "out"  # the account's own directory (files are written in its name)
    out.mkdir()
    os.chown(out, account.uid, account.gid)

    mirror = scratch / "mirrors/own.git"  # the account's mirror, as a build account has
    get(url, "main", commit, mirror, user=account)
    assert {p.stat().st_uid for p in [mirror, *mirror.rglob("*")]} == {account.uid}
    write_out(mirror, commit, out / "own", user=account)

    shared = scratch / "mirrors/root.git"  # root's mirror, checked out for the account
    get(url, "main", commit, shared)
    write_out(shared, commit, out / "from-root", user=account)

    for tree_dir in [out / "own", out / "from-root"]:
        paths = [tree_dir, *tree_dir.rglob("*")]
        assert {p.lstat().st_uid for p in paths} == {account.uid}
        assert {p.lstat().st_gid for p in paths} == {account.gid}
        assert tree(tree_dir)["postBuild mode"] == "0o755"
        assert tree(tree_dir)["intro"] == "-> README.md"
