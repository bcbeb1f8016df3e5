"""Servers of a conda environment fork from the fork server of its Python's conda server
layer (``envs/conda_layer.py``), which runs as root: nothing a repository put in its
environment may run there. The repository here plants, from its postBuild, a ``.pth`` file
and a ``sitecustomize`` in the environment's site-packages, each recording the account that
runs it. The layer (built by the hub after the environment, from the channel's Python and
the server packages alone) holds neither; the forked server runs the ``.pth`` as the user
once it is the user, and its kernel, the environment's own Python, imports
``sitecustomize`` as the user; root runs neither, before or after the fork. A hub killed
(``kill -9``) while it builds the layer builds it again at the environment's next launch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import needs_default_env, needs_root
from e2e.test_conda_launch import channel, hub  # noqa: F401 (fixtures)
from e2e.test_repository_launch import (
    built_envs,
    by_repo_key,
    forked_from,
    options,
    repo,
    start_and_follow,
)
from gitserver import GitDaemon
from hubprocesses import kill_hub
from hubtest import Hub, new_test_root, remove_later, wait_for

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]

ENVIRONMENT = "channels: [conda-forge]\ndependencies:\n  - python=3.10\n  - hello-conda=1.0\n"
# Run by whoever imports it: leaves a file named for its uid in the records folder.
RECORD = "import os; open(os.path.join({folder!r}, '{what}-%d' % os.getuid()), 'a').close()"
POST_BUILD = """#!/bin/bash
set -eu
site=$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
echo {pth} > "$site/zz-record.pth"
echo {custom} > "$site/sitecustomize.py"
"""


@pytest.mark.timeout(1200)
def test_a_conda_servers_fork_runs_nothing_of_the_repository_as_root(
    hub: Hub,  # noqa: F811
    git: GitDaemon,
) -> None:
    root = new_test_root()
    try:
        plant_and_launch(hub, git, root / "records")
    finally:
        remove_later(root)


def plant_and_launch(running: Hub, git: GitDaemon, records: Path) -> None:
    records.mkdir()
    os.chmod(records, 0o1777)  # servers have a /tmp of their own
    pth = RECORD.format(folder=str(records), what="pth")
    custom = RECORD.format(folder=str(records), what="sitecustomize")
    post_build = POST_BUILD.format(pth=f'"{pth}"', custom=f'"{custom}"')
    name = repo(
        git,
        {"environment.yml": ENVIRONMENT, "postBuild": post_build},
        executable=("postBuild",),
    )
    user = running.new_user("cora-layer")
    # The build, then the first launch; the hub builds the layer after the build. It is
    # killed while it does, and builds the layer again at the next launch.
    assert start_and_follow(user, "", options(git, name))[-1].get("ready")
    user.stop()
    key = next(m for m in built_envs(running).values() if m["repo"] == git.url(name))["fork_layer"]
    build_log = running.root / "binder/logs" / f"{key}.log"
    wait_for(build_log.exists, 300, "the conda server layer's build to begin")
    kill_hub(running)
    running.start()
    assert key not in built_envs(running)
    assert start_and_follow(user, "", options(git, name))[-1].get("ready")
    user.stop()
    wait_for(lambda: key in built_envs(running), 600, "the conda server layer to be built")
    layer_prefix = running.root / "binder/envs" / key / "env"
    layer_site = next(layer_prefix.glob("lib/python3.10/site-packages"))
    assert not (layer_site / "zz-record.pth").exists()
    assert not (layer_site / "sitecustomize.py").exists()
    assert (layer_site / "jupyter_server").is_dir()

    assert start_and_follow(user, "", options(git, name))[-1].get("ready")
    run = user.run_code(
        "import os, sys, hello_conda\n"
        "print(os.getppid(), sys.prefix, sys.executable, hello_conda.VERSION, os.getuid())"
    )
    assert run.status == "ok", run
    server, prefix, executable, version, uid = run.stdout.split()
    # The forked server ran the .pth as the user, the kernel imported sitecustomize as the
    # user; root ran neither.
    seen = {path.name for path in records.iterdir()}
    assert not any(name.endswith("-0") for name in seen), seen
    assert {f"pth-{uid}", f"sitecustomize-{uid}"} <= seen, seen
    assert forked_from(int(server)) == str(layer_prefix / "bin/python3")
    assert Path(prefix).parent.name == by_repo_key(running, git.url(name))
    assert (executable, version) == (f"{prefix}/bin/python3", "1.0")
    user.stop()
