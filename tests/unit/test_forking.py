"""Which servers the fork server may start: only root may change the environment's code,
and nothing that Python or jupyterhub-singleuser reads before the fork may differ."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hubstack.backends import fork_server
from hubstack.backends.forking import (
    ForkServer,
    forkable,
    installed_stamp,
    layer_python,
    root_only,
    server_argv,
)
from hubstack.launch.plan import BuiltRepository, Content

SERVER = Path("/env/bin/jupyterhub-singleuser")


def test_the_servers_own_command_line_follows_the_listen_code() -> None:
    argv = ("/env/bin/python3", "-c", "code", str(SERVER), "--ServerApp.root_dir=/home/a")
    assert server_argv(argv, SERVER) == [str(SERVER), "--ServerApp.root_dir=/home/a"]


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("JUPYTERHUB_API_TOKEN", True),
        ("HOME", True),
        ("PYTHONPATH", True),  # placed on the path by the forked child
        ("PYTHONHOME", False),
        ("LD_LIBRARY_PATH", False),
        ("LD_PRELOAD", False),
        ("PYTHONHASHSEED", False),
        ("JUPYTERHUB_SINGLEUSER_EXTENSION", False),
        ("JUPYTERHUB_SINGLEUSER_APP", False),
    ],
)
def test_variables_read_at_import_time_rule_out_a_fork(name: str, allowed: bool) -> None:
    assert forkable({"HOME": "/home/a", name: "1"}) is allowed


def built(tmp_path: Path, **changes: object) -> BuiltRepository:
    """An environment on a server layer, both virtualenvs of this Python."""
    for name in ("layer", "env"):
        (tmp_path / name / "bin").mkdir(parents=True, exist_ok=True)
        link = tmp_path / name / "bin/python3"
        if not link.is_symlink():
            link.symlink_to(sys.executable)
    content = Content("r", "https://example.org/r", "c" * 40, tmp_path / "mirror")
    fields: dict = {"prefix": tmp_path / "env", "content": content, "layer": tmp_path / "layer"}
    return BuiltRepository(**(fields | changes))


def test_environments_on_a_layer_fork_from_the_layers_fork_server(tmp_path: Path) -> None:
    assert layer_python(built(tmp_path)) == tmp_path / "layer/bin/python3"
    assert layer_python(built(tmp_path, content=None)) == tmp_path / "layer/bin/python3"


def test_what_wraps_the_server_or_is_read_at_start_rules_out_the_layers_fork(
    tmp_path: Path,
) -> None:
    assert layer_python(built(tmp_path, layer=None)) is None  # its own server packages
    assert layer_python(built(tmp_path, apt=True)) is None  # LD_LIBRARY_PATH
    content = Content("r", "https://example.org/r", "c" * 40, tmp_path / "m", start="start")
    assert layer_python(built(tmp_path, content=content)) is None  # wraps the server
    other = tmp_path / "env/bin/python3"
    other.unlink()
    other.symlink_to("/bin/sh")  # another interpreter than the layer's
    assert layer_python(built(tmp_path)) is None


def make_env(root: Path) -> Path:
    site = root / "lib/python3.11/site-packages"
    site.mkdir(parents=True)
    (root / "bin").mkdir()
    return site


@pytest.mark.skipif(os.geteuid() != 0, reason="files owned by root need root")
def test_only_environments_that_only_root_can_change(tmp_path: Path) -> None:
    env = tmp_path / "env"
    site = make_env(env)
    python = Path("/usr/bin/python3")
    os.chmod(tmp_path, 0o755)
    assert root_only(env, python)
    os.chmod(site, 0o777)
    assert not root_only(env, python)  # anyone could put code the parent imports as root
    os.chmod(site, 0o755)
    os.chown(env / "bin", 1, 1)
    assert not root_only(env, python)
    assert not root_only(tmp_path / "missing", python)
    os.chown(env / "bin", 0, 0)
    os.chmod(tmp_path, 0o777)
    assert not root_only(env, python)  # anyone could move the environment away


def test_a_fork_server_is_replaced_once_its_environment_changes(tmp_path: Path) -> None:
    """A package installed into the environment (its metadata directory added to
    site-packages) ends the running fork server and the next start gets a new one; until
    then the same one serves every start. An environment without Jupyter still gives a
    fork server (what it cannot import is left to the servers)."""
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin/python3"
    (site,) = env.glob("lib/python3*/site-packages")
    server = ForkServer(python, tmp_path / "fork-server.log")
    server.ensure_started()
    first = server._proc
    assert first is not None
    server.ensure_started()
    assert server._proc is first
    stamp = installed_stamp(python)
    (site / "example-1.0.dist-info").mkdir()
    os.utime(site, ns=(stamp[-1] + 10**9, stamp[-1] + 10**9))  # a coarse clock still moves
    server.ensure_started()
    assert server._proc is not first
    assert first.wait(30) == 0  # the old parent ended when the hub let go of it
    assert server._proc is not None and server._proc.poll() is None
    server._proc.kill()
    server._proc.wait()


def folder(root: Path, *entries: str) -> str:
    """A folder of site-packages entries: ``name/`` a package, ``*.dist-info`` metadata,
    anything else a file (``name=text`` gives it that text)."""
    root.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        name, _, text = entry.partition("=")
        if name.endswith("/"):
            (root / name).mkdir()
        else:
            (root / name).write_text(text)
    return str(root)


@pytest.mark.parametrize(
    ("entries", "found"),
    [
        # another copy of the same distribution at the same version changes nothing
        (("traitlets/", "traitlets-5.14.3.dist-info/"), None),
        # at another version, or without metadata, the fresh server would import it
        (("traitlets/", "traitlets-5.0.0.dist-info/"), "traitlets"),
        (("traitlets/",), "traitlets"),
        # a single file the same as the imported one changes nothing; another one does
        (("helper.py=same\n",), None),
        (("helper.py=other\n",), "helper.py"),
        (("helper.cpython-311-x86_64-linux-gnu.so=x",), "helper.cpython-311-x86_64-linux-gnu.so"),
        # what the parent has not imported, and what is no module, is not looked at
        (("numpy/", "README", "hubstack-server-layer.pth=import site"), None),
        # a standard library module (no distribution) shadowed by a file of the user's
        (("json.py=",), "json.py"),
    ],
)
def test_a_folder_ahead_of_the_parents_must_not_change_what_it_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entries: tuple[str, ...], found: str | None
) -> None:
    imported = {
        "traitlets": "/layer/traitlets/__init__.py",
        "helper": folder(tmp_path / "layer", "helper.py=same\n") + "/helper.py",
        "json": "/usr/lib/python3.11/json/__init__.py",
    }
    monkeypatch.setattr(fork_server, "DISTRIBUTIONS", {"traitlets": {("traitlets", "5.14.3")}})
    ahead = folder(tmp_path / "ahead", *entries)
    shadow = fork_server.shadowed([str(tmp_path / "missing"), ahead], imported)
    assert shadow == (None if found is None else f"{ahead}/{found}")
