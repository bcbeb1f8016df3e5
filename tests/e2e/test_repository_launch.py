"""Servers with environments built from repositories, end to end on a real hub: the REST
API and the spawn form, the progress stream with BinderHub's phases, the repository's
files and ``start`` script in the running server, the cache, and refusals."""

from __future__ import annotations

import concurrent.futures
import json
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import needs_default_env, needs_root
from gitserver import GitDaemon, add_commit, make_repo
from hubprocesses import kill_hub
from hubtest import Hub, Session, running_hub, wait_for

from hubstack.envs.server_layer import FALLBACK_NOTE

pytestmark = [pytest.mark.e2e, needs_root, needs_default_env]

TABULATE = "tabulate==0.9.0"
TERMCOLOR = "termcolor==2.4.0"
# A server dependency at another version than the server layer's (jupyter-server and
# jupyterhub accept it).
PROMETHEUS = "prometheus-client==0.20.0"
REF_CACHE = 1.0  # seconds: the hub's binder.ref_cache
START = '#!/bin/bash\nexport HUBSTACK_PROBE="set by start"\nexec "$@"\n'


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    # A branch resolved once is launched at that commit for binder.ref_cache: one second
    # here, so that a test can launch a branch's new commit soon after.
    config = {"policy": {"named_servers": {"max": 4}}, "binder": {"ref_cache": "1s"}}
    with running_hub(config) as running:
        yield running


@pytest.fixture(scope="module")
def carol(hub: Hub) -> Session:
    return hub.new_user("carol")


def repo(git: GitDaemon, files: dict[str, str], executable: tuple[str, ...] = ()) -> str:
    name = f"r{secrets.token_hex(3)}"
    make_repo(git.base / name, files, executable=executable)
    return name


def options(git: GitDaemon, name: str, ref: str = "main") -> dict[str, Any]:
    return {"environment": "repository", "repo": git.url(name), "ref": ref}


def start_and_follow(session: Session, server: str, sent: dict[str, Any]) -> list[dict[str, Any]]:
    """Start a server and read its whole progress stream: the start request is sent in the
    background, since the hub answers it only when the server is up (within 10 s) and the
    stream of a start that has ended tells only that it is ready."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = pool.submit(session.start, server, sent)
        wait_for(
            lambda: (session.model(server) or {}).get("pending") == "spawn" or started.done(),
            60,
            f"the start of {server}",
        )
        assert not started.done(), "the start ended before its progress could be followed"
        events = session.progress(server, timeout=600)
        assert started.result().status_code in (201, 202)
    return events


def phases(events: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(e["phase"] for e in events if "phase" in e))


def test_launch_through_the_api_builds_and_runs_the_repository(
    hub: Hub, git: GitDaemon, carol: Session
) -> None:
    files = {
        "binder/requirements.txt": "tabulate==0.9.0\n",
        "binder/start": START,
        "notebooks/intro.ipynb": '{"cells": [], "metadata": {}, "nbformat": 4, '
        '"nbformat_minor": 5}\n',
    }
    name = repo(git, files, executable=("binder/start",))
    events = start_and_follow(carol, "repo1", options(git, name))
    assert events[-1].get("ready"), events
    assert phases(events) == ["fetching", "building", "built", "launching"]

    model = carol.model("repo1")
    assert model is not None
    commit = model["user_options"]["commit"]
    assert len(commit) == 40
    run = carol.run_code(
        "import os, tabulate\n"
        "print(tabulate.__version__)\n"
        "print(os.environ['HUBSTACK_PROBE'])\n"
        "print(os.environ['REPO_DIR'] == os.getcwd())\n"
        "print(sorted(os.listdir('notebooks')))",
        "repo1",
    )
    assert run.status == "ok", run
    assert run.stdout.splitlines() == ["0.9.0", "set by start", "True", "['intro.ipynb']"]
    # The server's root is the repository, so launch links are relative to it.
    contents = carol.http.get(
        f"{carol.server_url('repo1')}api/contents/notebooks",
        headers={"Authorization": f"token {carol.token}"},
        timeout=30,
    )
    assert contents.status_code == 200
    assert [c["name"] for c in contents.json()["content"]] == ["intro.ipynb"]

    # Started again with its options, it finds its environment and keeps its commit.
    add_commit(git.base / name, {"README.md": "new\n"})
    carol.stop("repo1")
    events = start_and_follow(carol, "repo1", model["user_options"])
    assert events[-1].get("ready"), events
    assert "built" in phases(events) and "building" not in phases(events)
    model = carol.model("repo1")
    assert model is not None and model["user_options"]["commit"] == commit
    carol.stop("repo1", remove=True)


def test_files_a_user_changed_survive_a_new_commit(
    hub: Hub, git: GitDaemon, carol: Session
) -> None:
    name = repo(git, {"data.txt": "v1\n"})
    assert carol.start("keep", options(git, name)).status_code in (201, 202)
    carol.wait_ready("keep", timeout=600)
    resolved = time.monotonic()  # main was resolved by now
    run = carol.run_code("open('data.txt', 'w').write('mine\\n')", "keep")
    assert run.status == "ok", run
    carol.stop("keep")

    add_commit(git.base / name, {"data.txt": "v2\n"})
    # Launched within binder.ref_cache of its first launch, main would be the commit it was.
    time.sleep(max(0.0, resolved + REF_CACHE - time.monotonic()))
    assert carol.start("keep", options(git, name)).status_code in (201, 202)
    carol.wait_ready("keep", timeout=600)
    run = carol.run_code(
        "import os\nprint(open('data.txt').read().strip())\n"
        f"print(open(os.path.join('..', {name + '.previous'!r}, 'data.txt')).read().strip())",
        "keep",
    )
    assert run.stdout.split() == ["v2", "mine"], run
    carol.stop("keep", remove=True)


def test_launch_through_the_spawn_form(hub: Hub, git: GitDaemon, carol: Session) -> None:
    name = repo(git, {"requirements.txt": "tabulate==0.9.0\n"})
    url = f"{hub.url}/hub/spawn/carol/viaform"
    page = carol.http.get(url, timeout=30)
    assert "Other… (from a repository)" in page.content.decode()
    resp = carol.http.post(
        url,
        data={
            "machine": "small",
            "environment": "repository",
            "repo": git.url(name),
            "ref": "main",
            "_xsrf": carol.http.cookies.get("_xsrf", path="/hub/"),
        },
        allow_redirects=False,
        timeout=60,
    )
    assert resp.status_code == 302, resp.text[-2000:]
    carol.wait_ready("viaform", timeout=600)
    assert carol.run_code(
        "import tabulate; print(tabulate.__version__)", "viaform"
    ).stdout.strip() == ("0.9.0")
    carol.stop("viaform", remove=True)


@pytest.mark.parametrize(
    ("sent", "says"),
    [
        ({"repo": "ext::sh -c touch% /tmp/pwned"}, "not allowed"),
        ({"repo": "file:///etc"}, "not allowed"),
        ({"repo": "http://evil.example/org/repo"}, "evil.example"),
        ({"ref": "--upload-pack=touch /tmp/pwned"}, "-"),
        ({"commit": "main"}, "40-character"),
    ],
)
def test_bad_repository_options_are_refused_with_400(
    hub: Hub, git: GitDaemon, carol: Session, sent: dict[str, str], says: str
) -> None:
    resp = carol.start("bad", {**options(git, "whatever"), **sent})
    assert resp.status_code == 400, resp.text
    assert says in resp.json()["message"]


def test_repository_fields_need_the_repository_environment(hub: Hub, carol: Session) -> None:
    resp = carol.start("bad", {"environment": "python", "repo": "git://127.0.0.1/x"})
    assert resp.status_code == 400
    assert "only used with the environment 'repository'" in resp.json()["message"]


def test_a_build_that_cannot_work_tells_the_user_why(
    hub: Hub, git: GitDaemon, carol: Session
) -> None:
    name = repo(git, {"environment.yml": "dependencies:\n  - r-base\n"})
    resp = carol.start("conda", options(git, name))
    if resp.status_code >= 400:  # failed within JupyterHub's wait for the POST
        message = resp.json()["message"]
    else:
        events = carol.progress("conda", timeout=300)
        assert events[-1].get("failed"), events
        message = events[-1]["message"]
    assert "r-base" in message
    carol.api("DELETE", "/users/carol/servers/conda", json={"remove": True})


def building(marker: str) -> bool:
    """Whether a build's postBuild is running ``sleep <marker>`` now."""
    found = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, check=False)
    return found.returncode == 0


def test_a_launch_gets_the_repository_as_post_build_left_it_also_after_a_hub_crash(
    hub: Hub, git: GitDaemon, carol: Session
) -> None:
    marker = f"{6 + secrets.randbelow(3)}.{secrets.randbelow(900) + 100}"  # seconds
    post_build = f"#!/bin/sh\nset -e\necho downloaded > data/fetched.csv\nsleep {marker}\n"
    name = repo(git, {"postBuild": post_build, "data/README": "data\n"}, executable=("postBuild",))
    # The hub dies while the build runs: the restarted hub builds again and starts the server.
    # The start's POST is not waited for: a build on the shared server layer can be over
    # by the time JupyterHub answers it.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(carol.start, "postbuild", options(git, name))
        wait_for(lambda: building(marker), 300, "the build's postBuild")
        kill_hub(hub)
    hub.start()
    carol.wait_ready("postbuild", timeout=600)
    run = carol.run_code(
        "import os\nprint(open('data/fetched.csv').read().strip())\n"
        "print(os.stat('data/fetched.csv').st_uid == os.getuid())",
        "postbuild",
    )
    assert run.stdout.split() == ["downloaded", "True"], run
    carol.stop("postbuild", remove=True)


POST_BUILD = """#!/bin/bash
set -e
pip install --no-deps --quiet termcolor==2.4.0
echo 'Done!' > ~/postbuild.txt
mkdir -p ~/.jupyter && echo '{}' > ~/.jupyter/jupyter_server_config.json
npm install --global --no-audit --no-fund semver@7.6.3
"""


def test_a_repositorys_packages_home_and_paths_reach_kernels_and_terminals(
    hub: Hub, git: GitDaemon, carol: Session
) -> None:
    """repo2docker's promises: apt.txt's commands and libraries, pip, what postBuild left in
    its home, start, REPO_DIR and ~/.local/bin, in a kernel and in a terminal alike."""
    files = {"apt.txt": "figlet\ntoilet\n", "postBuild": POST_BUILD, "start": START}
    name = repo(git, files, executable=("postBuild", "start"))
    events = start_and_follow(carol, "tools", options(git, name))
    assert events[-1].get("ready"), events
    log = [event["message"] for event in events if event.get("phase") == "building"]
    assert "Note: the installation scripts of these packages were not run: figlet toilet" in log
    run = carol.run_code(
        "import ctypes, os, subprocess, sys\n"
        "print(open(os.path.expanduser('~/postbuild.txt')).read().strip())\n"
        "print(os.environ['HUBSTACK_PROBE'], os.getcwd() == os.environ['REPO_DIR'])\n"
        "out = lambda *a: subprocess.run(a, capture_output=True, text=True, check=True).stdout\n"
        "print(out('toilet', '--version').splitlines()[0])\n"
        "ctypes.CDLL('libcaca.so.0')\n"
        "print('termcolor' in out('pip', 'list'))\n"
        "out('pip', 'install', '--no-deps', '--quiet', 'tabulate==0.9.0')\n"
        "print(out(sys.executable, '-c', 'import tabulate; print(tabulate.__file__)').strip())\n"
        "print(os.path.expanduser('~/.local/bin') in os.environ['PATH'].split(':'))",
        "tools",
    )
    assert run.status == "ok", run
    lines = run.stdout.splitlines()
    assert lines == ["Done!", "set by start True", lines[2], "True", lines[4], "True"], run
    # pip install in the server: into the user's ~/.local, found by the environment's Python
    assert lines[4].endswith("/.local/lib/python3.11/site-packages/tabulate/__init__.py")
    assert lines[2].startswith("TOIlet")
    shown = carol.run_in_terminal(
        "command -v python pip figlet semver; toilet --version | head -n 1; "
        'echo "man=$MANPATH"; ls -1 ~/.jupyter',
        "tools",
    )
    found = [line.strip() for line in shown.splitlines()]
    prefix = next(line for line in found if line.endswith("/bin/python")).removesuffix("bin/python")
    assert f"{prefix}bin/pip" in found
    assert f"{prefix}apt/usr/bin/figlet" in found  # the alternative figlet's postinst makes
    assert f"{prefix}bin/semver" in found  # npm install -g in postBuild
    assert "jupyter_server_config.json" in found  # what postBuild left in its home
    assert any(line.startswith("TOIlet") for line in found)
    assert f"man={prefix}apt/usr/share/man:" in found
    carol.stop("tools", remove=True)


def built_envs(hub: Hub) -> dict[str, dict[str, Any]]:
    """The metadata of every complete entry of the hub's environment cache, by key."""
    found = {}
    for meta in (hub.root / "binder/envs").glob("*/meta.json"):
        found[meta.parent.name] = json.loads(meta.read_text())
    return found


# Jupyter config in the environment's prefix, as `jupyter ... --sys-prefix` writes it.
ENV_CONFIG = """#!/bin/bash
set -e
etc="$(python -c 'import sys; print(sys.prefix)')/etc/jupyter"
mkdir -p "$etc"
echo '{"ContentsManager": {"hide_globs": ["hidden-by-env*"]}}' > "$etc/jupyter_server_config.json"
"""


def by_repo_key(hub: Hub, url: str) -> str:
    return next(key for key, meta in built_envs(hub).items() if meta["repo"] == url)


def forked_from(pid: int) -> str:
    """The interpreter of the fork server that forked the server ``pid``, or why it was not
    forked: a server started afresh (also by a fork server's child) runs ``python -c``."""
    status = Path(f"/proc/{pid}/status").read_text()
    parent = int(re.search(r"^PPid:\s+(\d+)", status, re.M)[1])
    argv = Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0")
    own = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if own[1:2] == [b"-c"] or argv[1:3] != [b"-I", b"-c"]:
        return f"not forked: {own[:2]!r}, child of {argv[0]!r}"
    return argv[0].decode()


def building_lines(events: list[dict[str, Any]]) -> list[str]:
    return [e["message"] for e in events if e.get("phase") == "building"]


def test_repositories_share_one_server_layer_and_a_conflicting_one_falls_back(
    hub: Hub, git: GitDaemon, carol: Session
) -> None:
    """Two repositories built one after the other use one server layer: the second installs
    its own package only, and its server (the environment's Python, the layer's JupyterLab
    and extensions) runs a kernel that imports it. A repository pinning a server dependency
    to another version than the layer's gets the server packages of its own."""
    first = repo(git, {"requirements.txt": f"{TERMCOLOR}\n"})
    files = {
        "requirements.txt": f"{TABULATE}\n# {secrets.token_hex(3)}\n",
        "postBuild": ENV_CONFIG,
        "hidden-by-env.txt": "",
    }
    second = repo(git, files, executable=("postBuild",))
    events = start_and_follow(carol, "layer1", options(git, first))
    assert events[-1].get("ready"), events
    events = start_and_follow(carol, "layer2", options(git, second))
    assert events[-1].get("ready"), events
    log = building_lines(events)
    assert "Installing the Jupyter server and kernel" not in log, log
    assert not any(line.startswith("Building the shared server layer") for line in log), log
    by_repo = {meta["repo"]: meta for meta in built_envs(hub).values()}
    layer = by_repo[git.url(first)]["layer"]
    assert by_repo[git.url(second)]["layer"] == layer
    assert f"Using the shared server layer {layer[:12]}" in log
    run = carol.run_code(
        "import os, sys, tabulate, jupyterlab\n"
        "print(tabulate.__version__)\n"
        "print(sys.executable.startswith(sys.prefix), jupyterlab.__file__.startswith(sys.prefix))\n"
        "print(os.getppid(), sys.prefix)",
        "layer2",
    )
    assert run.status == "ok", run
    version, *checks, server, prefix = run.stdout.split()
    assert [version, *checks] == ["0.9.0", "True", "False"], run
    # The server is a fork of the layer's fork server, with the environment's prefix and
    # interpreter: its kernels are the environment's Python.
    layer_python = hub.root / "binder/envs" / layer / "env/bin/python3"
    assert forked_from(int(server)) == str(layer_python)
    assert prefix == str(hub.root / "binder/envs" / by_repo_key(hub, git.url(second)) / "env")
    token = {"Authorization": f"token {carol.token}"}
    # The Jupyter config in the environment's prefix applies to its server.
    listed = carol.http.get(f"{carol.server_url('layer2')}api/contents", headers=token).json()
    names = {item["name"] for item in listed["content"]}
    assert "requirements.txt" in names and "hidden-by-env.txt" not in names, names
    page = carol.http.get(f"{carol.server_url('layer2')}lab", headers=token, timeout=60)
    assert page.status_code == 200
    assert "jupyterlab_pygments" in page.text  # a labextension of the layer's share/jupyter
    script = re.search(r'src="([^"]*/static/lab/[^"]+)"', page.text)
    assert script is not None, page.text[-2000:]
    static = carol.http.get(f"{hub.url}{script[1]}", headers=token, timeout=60)
    assert static.status_code == 200 and len(static.content) > 1000
    carol.stop("layer1", remove=True)
    carol.stop("layer2", remove=True)

    pinned = repo(git, {"requirements.txt": f"{PROMETHEUS}\n"})
    events = start_and_follow(carol, "pinned", options(git, pinned))
    assert events[-1].get("ready"), events
    assert FALLBACK_NOTE in building_lines(events)
    assert "layer" not in {m["repo"]: m for m in built_envs(hub).values()}[git.url(pinned)]
    run = carol.run_code(
        "import importlib.metadata as m; print(m.version('prometheus-client'))", "pinned"
    )
    assert run.stdout.strip() == PROMETHEUS.split("==")[1], run
    carol.stop("pinned", remove=True)


# In a kernel: the server's pid, and a copy of a module every server imports (six, from the
# layer) in the user's ~/.local, changed, where a server started afresh imports it first.
SHADOW = (
    "import os, shutil, six, sys\n"
    "site = os.path.expanduser(f'~/.local/lib/python{sys.version_info[0]}.{sys.version_info[1]}"
    "/site-packages')\n"
    "os.makedirs(site, exist_ok=True)\n"
    "shutil.copy(six.__file__, site)\n"
    "open(os.path.join(site, 'six.py'), 'a').write('\\nSHADOWED = True\\n')\n"
    "print(os.getppid())"
)


def test_a_module_of_the_users_ahead_of_the_layers_starts_the_server_afresh(
    hub: Hub, git: GitDaemon
) -> None:
    """A server forked from the layer's fork server has the layer's modules in memory; when the
    user's ~/.local holds another version of one, a server started afresh would import that
    instead, and so the server is started afresh. Without it, the next start forks again, and
    that server outlives a `kill -9` of the hub."""
    user = hub.new_user("shadow")
    name = repo(git, {"requirements.txt": f"{TERMCOLOR}\n# {secrets.token_hex(3)}\n"})
    assert start_and_follow(user, "", options(git, name))[-1].get("ready")
    run = user.run_code(SHADOW)
    assert run.status == "ok", run
    assert not forked_from(int(run.stdout)).startswith("not forked")
    user.stop()

    assert start_and_follow(user, "", options(git, name))[-1].get("ready")
    run = user.run_code("import os, six; print(six.SHADOWED, os.getppid())")
    assert run.status == "ok", run
    shadowed, server = run.stdout.split()
    assert shadowed == "True" and forked_from(int(server)).startswith("not forked")
    log = next((hub.data_dir / "logs").glob("*shadow*/default.log")).read_text()
    assert "six.py is not what the fork server imported: starting the server afresh" in log
    assert user.run_code("import os; os.remove(__import__('six').__file__)").status == "ok"
    user.stop()

    assert start_and_follow(user, "", options(git, name))[-1].get("ready")
    run = user.run_code("import os; print(os.getppid())")
    assert run.status == "ok", run
    server = int(run.stdout)
    assert not forked_from(server).startswith("not forked")

    # The hub dies; its fork servers end with it, the server they forked runs on, and the
    # restarted hub takes it back and stops it.
    kill_hub(hub)
    hub.start()
    run = user.run_code("import os; print(os.getppid())")
    assert run.status == "ok", run
    assert int(run.stdout) == server
    user.stop()
    wait_for(lambda: not Path(f"/proc/{server}").exists(), 60, "the server to end")
