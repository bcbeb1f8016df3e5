"""The hub's package cache on its own: which wheels an environment names, what an index
vouches for, and how the cache is kept to its size. The index is a real HTTP server on
loopback serving PEP 691 JSON or PEP 503 HTML pages; the environments are folders as uv
leaves them (and as a hostile build could leave them)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import rattler
from condachannel import Package, serve, write_channel
from httpfake import QuietHandler, serving
from hubtest import free_port_block
from rattler.package_cache import PackageCache as CondaCache

from hubstack.envs.builder import build_script
from hubstack.envs.conda_install import seed_cache
from hubstack.envs.conda_packages import harvest_conda
from hubstack.envs.packages import PackageCache, installed_by_uv
from unit.test_build_script import spec

GOOD = b"the real wheel"
OTHER = b"a wheel someone made up"
WHEEL = "tabulate-0.9.0-py3-none-any.whl"


class Index(ThreadingHTTPServer):
    """Serves one project's page (``pages``: JSON or HTML) and its files."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.listed: dict[str, str] = {}  # file name: the sha256 the page gives
        self.json = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/simple"


class _Handler(QuietHandler):
    server: Index

    def do_GET(self) -> None:
        if self.path == "/simple/tabulate/":
            if self.server.json:
                files = [
                    {"filename": name, "url": f"/files/{name}", "hashes": {"sha256": digest}}
                    for name, digest in self.server.listed.items()
                ]
                body, kind = (
                    json.dumps({"files": files}).encode(),
                    "application/vnd.pypi.simple.v1+json",
                )
            else:
                links = "".join(
                    f'<a href="../../files/{name}#sha256={digest}">{name}</a>'
                    for name, digest in self.server.listed.items()
                )
                body, kind = links.encode(), "text/html"
        elif self.path.startswith("/files/") and self.path[7:] in self.server.files:
            body, kind = self.server.files[self.path[7:]], "application/octet-stream"
        else:
            self.send_error(404)
            return
        self.reply(body, kind)


@pytest.fixture
def index() -> Iterator[Index]:
    with serving(Index()) as server:
        yield server


def installed(prefix: Path, name: str = "tabulate-0.9.0", installer: str = "uv") -> Path:
    """A dist-info as uv writes it into an environment."""
    info = prefix / "lib/python3.11/site-packages" / f"{name}.dist-info"
    info.mkdir(parents=True)
    (info / "INSTALLER").write_text(f"{installer}\n")
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    return info


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("as_json", [True, False])
def test_a_wheel_is_kept_only_when_it_has_the_hash_the_index_lists(
    tmp_path: Path, index: Index, as_json: bool
) -> None:
    index.json = as_json
    installed(tmp_path / "env")
    cache = PackageCache(tmp_path / "binder", 10**6)
    index.files[WHEEL], index.listed[WHEEL] = OTHER, sha256(GOOD)
    refused = cache.harvest(tmp_path / "env", [index.url])
    assert refused.added == [] and refused.skipped == ["tabulate 0.9.0"]
    assert list(cache.wheels.iterdir()) == []
    assert list(cache.incoming.iterdir()) == []

    index.files[WHEEL] = GOOD
    kept = cache.harvest(tmp_path / "env", [index.url])
    assert kept.added == [WHEEL]
    assert (cache.wheels / WHEEL).read_bytes() == GOOD
    assert (cache.wheels / WHEEL).stat().st_mode & 0o777 == 0o644
    assert cache.wheels.stat().st_mode & 0o777 == 0o755
    assert cache.harvest(tmp_path / "env", [index.url]).known == [WHEEL]


def test_only_what_uv_installed_and_the_index_lists_with_the_same_tags_is_fetched(
    tmp_path: Path, index: Index
) -> None:
    prefix = tmp_path / "env"
    installed(prefix, "six-1.17.0")  # not on this index
    installed(prefix, "tabulate-0.9.0")
    installed(prefix, "pip-25.0", installer="pip")  # not uv's: left alone
    other_tags = "tabulate-0.9.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    index.files[other_tags], index.listed[other_tags] = GOOD, sha256(GOOD)
    harvest = PackageCache(tmp_path / "binder", 10**6).harvest(prefix, [index.url])
    assert harvest.added == []
    assert sorted(harvest.skipped) == ["six 1.17.0", "tabulate 0.9.0"]


def test_links_and_fifos_in_an_environment_are_not_followed(tmp_path: Path) -> None:
    """The environment is root's copy, but a build chose its names and contents."""
    prefix = tmp_path / "env"
    secret = tmp_path / "secret"
    secret.write_text("INSTALLER: uv\nTag: py3-none-any\n")
    linked = installed(prefix, "linked-1.0")
    for name in ("INSTALLER", "WHEEL"):
        (linked / name).unlink()
        (linked / name).symlink_to(secret)
    fifo = installed(prefix, "fifo-1.0")
    (fifo / "WHEEL").unlink()
    os.mkfifo(fifo / "WHEEL")
    elsewhere = tmp_path / "elsewhere"
    installed(elsewhere, "far-1.0")
    (prefix / "lib/python3.11/site-packages/far-1.0.dist-info").symlink_to(
        elsewhere / "lib/python3.11/site-packages/far-1.0.dist-info"
    )
    (prefix / "lib/python3.12").symlink_to(elsewhere / "lib/python3.11")
    installed(prefix, "real-1.0")
    assert [dist.name for dist in installed_by_uv(prefix)] == ["real"]


def test_the_cache_keeps_to_its_size_dropping_the_least_recently_used(tmp_path: Path) -> None:
    cache = PackageCache(tmp_path / "binder", 10**6)
    cache.create()
    now = time.time()
    for age, name in enumerate(
        ["c-1-py3-none-any.whl", "b-1-py3-none-any.whl", "a-1-py3-none-any.whl"]
    ):
        (cache.wheels / name).write_bytes(b"x" * 1000)
        os.utime(cache.wheels / name, (now - age * 86400, now - age * 86400))
    (cache.incoming / "d.whl.1.part").write_bytes(b"interrupted")
    assert cache.size() == 3000
    assert cache.trim(2500) == ["a-1-py3-none-any.whl"]
    assert cache.trim(10**6, unused_for=0.5 * 86400) == ["b-1-py3-none-any.whl"]
    assert sorted(p.name for p in cache.wheels.iterdir()) == ["c-1-py3-none-any.whl"]
    assert list(cache.incoming.iterdir()) == []


def test_builds_read_the_cache_through_find_links(tmp_path: Path) -> None:
    wheels = tmp_path / "packages/wheels"
    script = build_script(
        spec(requirements=("tabulate",)), Path("/srv/e"), Path("/usr/bin/python3"), "uv", wheels
    )
    installs = [line for line in script.splitlines() if "pip install" in line]
    assert installs and all(f"--find-links {wheels}" in line for line in installs)


# -- conda packages -------------------------------------------------------------------------


def solve(channel: str, gateway: Path) -> list[rattler.RepoDataRecord]:
    platforms = [rattler.Platform.current(), rattler.Platform("noarch")]
    solved = rattler.solve(
        [channel], ["tiny"], platforms=platforms, gateway=rattler.Gateway(cache_dir=gateway)
    )
    return list(asyncio.run(solved))


def install(records: list[rattler.RepoDataRecord], prefix: Path, cache: CondaCache) -> None:
    asyncio.run(rattler.install(records, prefix, package_cache=cache, show_progress=False))


def test_conda_packages_are_kept_from_the_channel_and_builds_read_them(tmp_path: Path) -> None:
    """A package is kept only from an allowed channel with the sha256 that channel lists;
    a later install finds it in the cache, with the channel gone."""
    channel = tmp_path / "channels/conda-forge"
    write_channel(channel, [Package("tiny", "1.0", files={"share/tiny.txt": (b"hello\n", False)})])
    cache = PackageCache(tmp_path / "binder", 10**9)
    with serve(tmp_path / "channels", free_port_block(1)) as base:
        url = f"{base}/conda-forge"
        records = solve(url, tmp_path / "gateway")
        install(records, tmp_path / "built", CondaCache(tmp_path / "scratch"))
        assert harvest_conda(cache, tmp_path / "built", [f"{base}/other"]).added == []
        archive = next(channel.glob("noarch/tiny-1.0-0.*"))
        genuine = archive.read_bytes()
        archive.write_bytes(genuine[:-10] + b"made up!!!")  # the channel's lists still say...
        assert harvest_conda(cache, tmp_path / "built", [url]).skipped == [archive.name]
        archive.write_bytes(genuine)
        assert harvest_conda(cache, tmp_path / "built", [url]).added == ["tiny-1.0-0"]
    kept = cache.conda / "tiny-1.0-0"
    assert (kept / "share/tiny.txt").stat().st_mode & 0o777 == 0o644
    assert list(cache.incoming.iterdir()) == []
    assert seed_cache(records, cache.conda, tmp_path / "own") == 1  # as a build does
    install(records, tmp_path / "next", CondaCache(tmp_path / "own"))
    assert (tmp_path / "next/share/tiny.txt").read_text() == "hello\n"
    assert "1 conda packages" in cache.summary()
