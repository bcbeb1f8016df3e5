"""Conda builds, for real: rattler in the build's sandbox, as the build account, in its
limits, from a conda channel served on loopback as the site's mirror (tests/condachannel.py;
the public channels cannot be reached from here): a Python the host lacks for runtime.txt,
and what fails (a channel outside the allow-list, a conflict, a missing package, the size
limit), leaving nothing behind. A full environment.yml launched on a hub:
tests/e2e/test_conda_launch.py.

The channel holds CPython 3.10 (the host has 3.11), pip, pure-Python packages in two
versions, a compiled shared library with an executable, a Python package that loads it,
two packages that cannot be installed together, and one larger than the size limit; and
Debian's R repackaged as r-base with IRkernel and remotes, for R environments' failures: an
R version no channel has, an install.R that stops (an R environment that builds and runs:
tests/e2e/test_conda_launch.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from condachannel import (
    PYENV,
    Package,
    basic_packages,
    noarch_python,
    serve,
    write_channel,
    write_r_packages,
)
from gitserver import GitDaemon
from hubtest import free_port_block, new_test_root

from hubstack.envs.repository import Repositories
from hubstack.system import cgroups
from system.test_builds import Site, python, version

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="builds run as their own account")

PYTHON = "3.10.13"  # a pyenv build on the test machines; not the host's Python


def packages(work: Path) -> list[Package]:
    conflicting = [
        noarch_python("needs-old-hello", "1.0", "old", "", depends=["hello-conda <2"]),
        noarch_python("needs-new-hello", "1.0", "new", "", depends=["hello-conda >=2"]),
    ]
    big = Package("big-data", "1.0", files={"share/big-data/zeros": (bytes(200 << 20), False)})
    return [*basic_packages(work, PYTHON), *conflicting, big]


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    if not (PYENV / PYTHON).is_dir():
        pytest.skip(f"no CPython {PYTHON} to put in the test channel")
    root = new_test_root()
    (root / "data").mkdir(mode=0o700)
    write_r_packages(root / "channels/conda-forge")
    write_channel(root / "channels/conda-forge", packages(root / "compile"))
    with (
        serve(root / "channels", free_port_block(1)) as url,
        GitDaemon(root / "git") as git,
    ):
        conda = {"enabled": True, "channels": ["conda-forge"], "mirror": url}
        made = Site(root, git, overrides={"conda": conda})
        try:
            yield made
        finally:
            made.remove()


def test_a_channel_outside_the_allow_list_is_refused(site: Site) -> None:
    env = "channels: [bioconda]\ndependencies:\n  - samtools\n"
    message = site.refused(site.repo({"environment.yml": env}))
    assert message == (
        "environment.yml asks for packages from the channel bioconda, which this hub does not "
        "allow; it allows conda-forge."
    )


def test_an_unsatisfiable_solve_names_the_conflict(site: Site) -> None:
    env = "dependencies:\n  - needs-old-hello\n  - needs-new-hello\n"
    message = site.refused(site.repo({"environment.yml": env}))
    assert "The conda packages cannot be installed together" in message
    assert "needs-old-hello" in message and "needs-new-hello" in message


def test_a_missing_package_is_named(site: Site) -> None:
    message = site.refused(site.repo({"environment.yml": "dependencies:\n  - no-such-pkg\n"}))
    assert "no-such-pkg" in message


def test_an_environment_over_the_size_limit_fails_leaving_nothing(site: Site) -> None:
    env = "dependencies:\n  - big-data\n"
    message = site.refused(site.repo({"environment.yml": env}), size="160M")
    assert "outgrew the size limit of 160M" in message
    assert "No space left on device" in message  # what ran out, in rattler's words


def test_runtime_txt_gets_a_python_the_host_lacks_from_the_channel(site: Site) -> None:
    files = {"runtime.txt": "python-3.10\n", "requirements.txt": "tabulate==0.9.0\n"}
    prepared, _ = site.prepare(site.repo(files))
    assert python(prepared, "import sys; print(sys.version.split()[0])") == PYTHON
    assert version(prepared, "tabulate") == "0.9.0"
    assert (prepared.env.prefix / "bin/jupyterhub-singleuser").exists()
    # The hub keeps the channel's packages for later builds (once the launch went on: by
    # now, or by this call).
    kept = Repositories(site.config(), cgroups.detect()).builder.keep_packages(prepared.env)
    assert kept is not None and f"python-{PYTHON}-0_hubstack" in [*kept.added, *kept.known]
    layer = site.root / "binder/packages/conda"
    assert (layer / f"python-{PYTHON}-0_hubstack/bin/python3.10").stat().st_mode & 0o777 == 0o755


def test_a_second_build_takes_the_packages_an_earlier_one_brought_from_the_cache(
    site: Site,
) -> None:
    """After the build above, the channel refuses every package archive (its package lists
    stay): a build of an environment.yml of that Python can only install it from the
    package cache, which is root's and which the build account copies from."""
    cache = site.root / "binder/packages/conda"
    kept = cache / f"python-{PYTHON}-0_hubstack"
    if not kept.is_dir():  # run alone: the earlier build keeps its packages first
        test_runtime_txt_gets_a_python_the_host_lacks_from_the_channel(site)
    assert (cache.stat().st_uid, kept.stat().st_uid) == (0, 0)
    assert not (cache.stat().st_mode | kept.stat().st_mode) & 0o022
    channel = site.root / "channels/conda-forge"
    hidden = site.root / "hidden-archives"
    archives = [*channel.glob("*/*.conda"), *channel.glob("*/*.tar.bz2")]
    assert archives
    hidden.mkdir()
    try:
        for archive in archives:
            (hidden / archive.parent.name).mkdir(exist_ok=True)
            archive.rename(hidden / archive.parent.name / archive.name)
        env = "channels: [conda-forge]\ndependencies:\n  - python=3.10\n"
        prepared, events = site.prepare(site.repo({"environment.yml": env}))
    finally:
        for archive in archives:
            (hidden / archive.parent.name / archive.name).rename(archive)
    log = [message for phase, message in events if phase == "building"]
    assert f"Installing 1 conda packages: python {PYTHON}" in log
    assert "1 of them from the hub's package cache" in log
    assert python(prepared, "import sys; print(sys.version.split()[0])") == PYTHON
    # The channel's Python has no bytecode: the build compiled it (users cannot write it).
    assert (prepared.env.prefix / "lib/python3.10/__pycache__/os.cpython-310.pyc").is_file()


def test_an_r_version_nobody_provides_fails_naming_it(site: Site) -> None:
    message = site.refused(site.repo({"runtime.txt": "r-9.9-2024-01-10\n"}))
    assert "r-base 9.9" in message


def test_an_install_r_that_fails_fails_the_build_leaving_nothing(site: Site) -> None:
    files = {"runtime.txt": "r-4.2\n", "install.R": "library(nosuchpackage)\n"}
    message = site.refused(site.repo(files))
    assert "Running install.R" in message  # as the build account, R from the channel
    assert "there is no package called" in message and "nosuchpackage" in message
