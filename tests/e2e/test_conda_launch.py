"""A repository with a conda environment.yml launched on a real hub: the build solves it
from a conda channel served on loopback as the site's mirror (tests/condachannel.py), and
the launched server's kernel, in the channel's Python, imports the conda packages. An R
repository (runtime.txt and DESCRIPTION) on the same hub: R and IRkernel from the channel
(Debian's, repackaged), its package's Imports from a CRAN-like repository on loopback, and
an R cell run by the environment's R kernel. Refusals, install.R and a Python from the
channel for runtime.txt: tests/system/test_conda_builds.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from condachannel import (
    PYENV,
    basic_packages,
    cran_repository,
    serve,
    write_channel,
    write_r_packages,
)
from conftest import needs_default_env, needs_root
from e2e.test_repository_launch import start_and_follow
from gitserver import GitDaemon, make_repo
from hubtest import Hub, Session, free_port_block, new_test_root, remove_later, running_hub

from hubstack.envs.layout import ENV

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]

PYTHON = "3.10.13"  # a pyenv build on the test machines; not the host's Python
ENVIRONMENT = """
channels: [conda-forge, defaults]
dependencies:
  - python=3.10
  - hello-conda=1.0
  - conda-forge::pygreet
  - pip
  - pip:
    - tabulate==0.9.0
"""


@pytest.fixture(scope="module")
def channel() -> Iterator[str]:
    if not (PYENV / PYTHON).is_dir():
        pytest.skip(f"no CPython {PYTHON} to put in the test channel")
    root = new_test_root()
    write_r_packages(root / "channels/conda-forge")
    write_channel(root / "channels/conda-forge", basic_packages(root / "compile", PYTHON))
    cran_repository(root / "channels/cran", root)
    try:
        with serve(root / "channels", free_port_block(1)) as url:
            yield url
    finally:
        remove_later(root)


@pytest.fixture(scope="module")
def hub(channel: str) -> Iterator[Hub]:
    conda = {"enabled": True, "mirror": channel}
    r = {"repos": f"{channel}/cran"}
    with running_hub({"binder": {"conda": conda, "r": r}}) as running:
        yield running


def test_a_conda_environment_runs_in_the_launched_server(hub: Hub, git: GitDaemon) -> None:
    dana: Session = hub.new_user("dana-conda")
    make_repo(git.base / "conda-env", {"environment.yml": ENVIRONMENT})
    sent = {"environment": "repository", "repo": git.url("conda-env"), "ref": "main"}
    events = start_and_follow(dana, "condaenv", sent)
    assert events[-1].get("ready"), events
    messages = [event.get("message", "") for event in events]
    assert any("defaults, which this hub does not use" in m for m in messages)
    assert any(m.startswith("Installing 5 conda packages") for m in messages)
    # The channel's Python runs the kernel (2.0 is in the channel too: the pin holds), with
    # the pip: section, the channel's pip, and a compiled library and its executable.
    run = dana.run_code(
        "import os, subprocess, sys, hello_conda, pip, pygreet, tabulate\n"
        "print(sys.version.split()[0])\n"
        "print(hello_conda.VERSION, tabulate.__version__, pip.__version__)\n"
        "print(pygreet.greet())\n"
        "greet = os.path.join(sys.prefix, 'bin', 'greet')\n"
        "print(subprocess.run([greet], capture_output=True, text=True).stdout.strip())",
        "condaenv",
    )
    assert run.status == "ok", run
    assert run.stdout.splitlines() == [
        PYTHON,
        "1.0 0.9.0 23.0.1",
        "hello from libgreet",
        "hello from libgreet",
    ]
    dana.stop("condaenv", remove=True)


R_PACKAGE = {
    "runtime.txt": "r-4.2-2024-01-10\n",
    "install.R": 'install.packages("hubstackshout")\n',
    "DESCRIPTION": "Package: binderrepo\nVersion: 0.1\nTitle: A Repository as a Package\n"
    "Description: Greets through its import.\nLicense: MIT\nImports: hubstackgreet\n",
    "NAMESPACE": "export(hello)\n",
    "R/hello.R": 'hello <- function() hubstackgreet::greeting("binderrepo")\n',
}


def test_an_r_repository_runs_in_the_environments_r_kernel(
    hub: Hub, git: GitDaemon, channel: str
) -> None:
    rhea: Session = hub.new_user("rhea-renv")
    make_repo(git.base / "r-package", R_PACKAGE)
    sent = {"environment": "repository", "repo": git.url("r-package"), "ref": "main"}
    events = start_and_follow(rhea, "renv", sent)
    assert events[-1].get("ready"), events
    messages = [event.get("message", "") for event in events]
    assert f"R installs packages from {channel}/cran" in messages
    assert "Running install.R" in messages
    assert "Installing the repository as an R package (DESCRIPTION)" in messages
    # The "ir" kernel is the environment's (the host's Debian R has one by that name too):
    # install.R's package, the DESCRIPTION package with its import, the site's repository;
    # and a package the user installs goes to their own library in their home.
    code = (
        'install.packages("hubstackgreet", quiet = TRUE)\n'
        'cat(binderrepo::hello(), hubstackshout::shout("r"), getOption("repos")[["CRAN"]], '
        "R.version$minor, R.home(), "
        'file.exists(file.path(.libPaths()[1], "hubstackgreet", "DESCRIPTION")), '
        'startsWith(.libPaths()[1], path.expand("~/R/")), sep = "\\n")'
    )
    run = rhea.run_code(code, "renv", kernel_name="ir")
    assert run.status == "ok", run
    greeting, shout, repos, minor, home, *user_library = run.stdout.splitlines()[-7:]
    assert (greeting, shout) == ("hello from binderrepo, said hubstackgreet", "R")
    assert (repos, minor[:2]) == (f"{channel}/cran", "2.")
    assert home.endswith(f"/{ENV}/lib/R") and home != "/usr/lib/R"
    assert user_library == ["TRUE", "TRUE"]
    rhea.stop("renv", remove=True)
