"""A repository cannot choose where the packages of an environment come from by uv or pip
settings of its own: such settings are left out of the key, so honouring them would let the
first launch decide what every later launch with the same requirements gets. Nor can a build
write or poison the package cache the hub keeps for later builds."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import secrets
import zipfile
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest
from httpfake import QuietHandler, serving
from system.test_builds import TABULATE, Site, python, site

from hubstack.envs.repository import Prepared, Repositories
from hubstack.launch.repo import repo_source
from hubstack.system import cgroups

__all__ = ["site"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="builds run as their own account")

WHEEL_NAME = "tabulate-0.9.0-py3-none-any.whl"


def poisoned_wheel() -> bytes:
    """A wheel that claims to be tabulate 0.9.0 and gives itself away."""
    files = {
        "tabulate.py": b"POISONED = True\n",
        "tabulate-0.9.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tabulate\n"
        b"Version: 0.9.0\n",
        "tabulate-0.9.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append("tabulate-0.9.0.dist-info/RECORD,,")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
        wheel.writestr("tabulate-0.9.0.dist-info/RECORD", "\n".join(record) + "\n")
    return buffer.getvalue()


class FakeIndex(ThreadingHTTPServer):
    """A package index on loopback that serves a poisoned tabulate and records each request."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _IndexHandler)
        self.requests: list[str] = []
        self.wheel = poisoned_wheel()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/simple"


class _IndexHandler(QuietHandler):
    server: FakeIndex

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        if self.path.rstrip("/") == "/simple/tabulate":
            body = f'<a href="/files/{WHEEL_NAME}">{WHEEL_NAME}</a>'.encode()
            kind = "text/html"
        elif self.path == f"/files/{WHEEL_NAME}":
            body, kind = self.server.wheel, "application/octet-stream"
        else:
            self.send_error(404)
            return
        self.reply(body, kind)


@pytest.fixture
def index() -> Iterator[FakeIndex]:
    with serving(FakeIndex()) as server:
        yield server


@pytest.mark.parametrize(
    ("path", "setting"),
    [
        ("uv.toml", 'extra-index-url = ["{url}"]\n'),
        ("pyproject.toml", '[tool.uv]\nextra-index-url = ["{url}"]\n'),
    ],
)
def test_repository_index_settings_are_not_honoured(
    site: Site, index: FakeIndex, path: str, setting: str
) -> None:
    requirements = f"{TABULATE}\n# {secrets.token_hex(4)}\n"
    files = {"requirements.txt": requirements, path: setting.format(url=index.url)}
    first, _ = site.prepare(site.repo(files))
    twin, _ = site.prepare(site.repo({"requirements.txt": requirements}))
    probe = "import tabulate; print(getattr(tabulate, 'POISONED', False))"
    assert python(first, probe) == "False"
    assert python(twin, probe) == "False"
    assert index.requests == []


# -- the hub's package cache ---------------------------------------------------------------

# tabulate-0.9.0-py3-none-any.whl as PyPI lists it.
GENUINE_SHA256 = "024ca478df22e9340661486f85298cff5f6dcdba14f3813e8830015b9ed1948f"

POST_BUILD = """#!/bin/bash
set -u
wheels={wheels}
base64 -d poisoned.b64 > /tmp/{wheel}
for name in {wheel} planted-1.0-py3-none-any.whl; do
  if cp /tmp/{wheel} "$wheels/$name" 2>/dev/null; then echo "PLANTED $name"; fi
done
ln -s /tmp/{wheel} "$wheels/linked.whl" 2>/dev/null && echo PLANTED linked.whl
pip install --quiet --force-reinstall --no-deps /tmp/{wheel}
site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo uv > "$site/tabulate-0.9.0.dist-info/INSTALLER"
mkdir "$site/shadow-1.0.dist-info" "$site/fifo-1.0.dist-info"
ln -s /etc/shadow "$site/shadow-1.0.dist-info/WHEEL"
ln -s /etc/shadow "$site/shadow-1.0.dist-info/INSTALLER"
echo uv > "$site/fifo-1.0.dist-info/INSTALLER"
mkfifo "$site/fifo-1.0.dist-info/WHEEL"
"""


def prepare_and_keep(site: Site, name: str) -> Prepared:
    """Launch ``name`` as the hub does and wait until its wheels are in the package cache."""
    config = site.config()
    repositories = Repositories(config, cgroups.detect())
    source = repo_source(site.git.url(name), "main", config.binder)

    async def launch() -> Prepared:
        prepared = await repositories.prepare(source, lambda _phase, _line: None)
        await repositories.settled()
        return prepared

    return asyncio.run(launch())


def test_a_build_cannot_write_or_poison_the_package_cache(site: Site) -> None:
    wheels = site.root / "binder/packages/wheels"
    post_build = POST_BUILD.format(wheels=wheels, wheel=WHEEL_NAME)
    hostile = site.repo(
        {
            "requirements.txt": f"{TABULATE}\n",
            "poisoned.b64": base64.b64encode(poisoned_wheel()).decode(),
            "postBuild": post_build,
        },
        executable=("postBuild",),
    )
    poisoned = prepare_and_keep(site, hostile)
    probe = "import tabulate; print(getattr(tabulate, 'POISONED', False))"
    assert python(poisoned, probe) == "True"  # its own environment has what it made
    log = (site.root / "binder/logs" / f"{poisoned.env.key}.log").read_text()
    assert "PLANTED" not in log

    kept = sorted(path.name for path in wheels.iterdir())
    assert WHEEL_NAME in kept and "planted-1.0-py3-none-any.whl" not in kept
    assert not any(name.startswith(("shadow", "fifo", "linked")) for name in kept)
    digest = hashlib.sha256((wheels / WHEEL_NAME).read_bytes()).hexdigest()
    assert digest == GENUINE_SHA256
    for path in [wheels, *wheels.iterdir()]:
        info = path.lstat()
        assert info.st_uid == 0 and not info.st_mode & 0o022, path

    twin = site.repo({"requirements.txt": f"{TABULATE}\n# {secrets.token_hex(4)}\n"})
    clean = prepare_and_keep(site, twin)
    assert python(clean, probe) == "False"
