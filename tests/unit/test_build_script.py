"""The shell a build runs and the command a repository's server starts with: every value
from a repository reaches the shell quoted."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from hubstack.envs.builder import build_script
from hubstack.envs.checkout import Content
from hubstack.envs.server_layer import CONSTRAINTS, FALLBACK_NOTE, PTH
from hubstack.envs.spec import EnvSpec
from hubstack.launch.plan import start_command

TARGET = Path("/srv/binder/envs/abc")


def spec(**changes: object) -> EnvSpec:
    fields: dict[str, object] = {
        "binder_dir": "",
        "kind": "requirements",
        "python": None,
        "requirements": (),
        "requirement_files": (),
        "install_project": False,
        "post_build": None,
        "start": None,
        "defining_files": (),
        "whole_tree": False,
        "notices": (),
    }
    return EnvSpec(**(fields | changes))  # type: ignore[arg-type]


def test_the_base_goes_in_first_then_the_repositorys_files_from_their_folders() -> None:
    script = build_script(
        spec(requirement_files=("binder/requirements.txt",), install_project=True),
        TARGET,
        Path("/usr/bin/python3.11"),
        "/opt/uv",
    )
    lines = script.splitlines()
    base = next(i for i, line in enumerate(lines) if "base-requirements.txt" in line)
    own = next(i for i, line in enumerate(lines) if "-r requirements.txt" in line)
    assert base < own
    assert f"(cd {TARGET}/repo/binder && /opt/uv pip install" in lines[own]
    assert lines[-2].endswith(" .")  # the package install, from the repository's root


def test_names_from_the_repository_cannot_run_shell() -> None:
    evil = "x; touch /tmp/pwned $(id).txt"
    script = build_script(
        spec(requirement_files=(f"{evil}/requirements.txt",), post_build=f"{evil}/postBuild"),
        TARGET,
        Path("/usr/bin/python3.11"),
        "/opt/uv",
    )
    assert shlex.quote(f"{evil}/postBuild") in script
    checked = subprocess.run(["bash", "-n", "-c", script], capture_output=True, check=False)
    assert checked.returncode == 0
    unquoted = re.sub(r"'[^']*'", "", script)
    assert "touch" not in unquoted and "$(id)" not in unquoted


def test_the_server_starts_through_start_and_opens_to_listed_sites() -> None:
    content = Content(
        name="repo",
        url="https://github.com/org/repo",
        commit="0" * 40,
        mirror=Path("/m.git"),
        start="binder/start",
        allow_origins=("https://docs.example.org", "http://a.b:8080"),
    )
    command = start_command(Path("/home/u/volumes/r/repo"), content, ["jupyterhub-singleuser"])
    assert command[:3] == ["/bin/sh", "-c", 'chmod +x "$0" 2>/dev/null; exec "$0" "$@"']
    assert command[3] == "/home/u/volumes/r/repo/binder/start"
    assert command[4] == "jupyterhub-singleuser"
    assert command[5] == (
        r"--ServerApp.allow_origin_pat=^(https://docs\.example\.org|http://a\.b:8080)$"
    )
    plain = Content(name="repo", url="u", commit="0" * 40, mirror=Path("/m.git"))
    assert start_command(Path("/w"), plain, ["srv"]) == ["srv"]


def test_apt_packages_are_unpacked_first_and_post_build_sees_the_servers_paths() -> None:
    script = build_script(
        spec(apt_packages=("figlet", "g++"), post_build="postBuild"),
        TARGET,
        Path("/usr/bin/python3.11"),
        "/opt/uv",
    )
    lines = script.splitlines()
    unpack = next(i for i, line in enumerate(lines) if "apt-get -s -q" in line)
    venv = next(i for i, line in enumerate(lines) if " venv --quiet --seed " in line)
    assert venv < unpack  # into the environment, with pip (--seed)
    assert "install -- figlet g++ > plan" in lines[unpack]
    run = lines[-2]
    assert f"PATH={TARGET}/env/bin:{TARGET}/env/apt/usr/local/bin:" in run
    assert f"LD_LIBRARY_PATH={TARGET}/env/apt/usr/lib/" in run
    assert f"REPO_DIR={TARGET}/repo ./postBuild" in run
    assert subprocess.run(["bash", "-n", "-c", script], check=False).returncode == 0


LAYER = Path("/srv/binder/envs/f00d")


def test_a_build_on_a_layer_installs_the_repository_with_its_constraints_or_falls_back() -> None:
    evil = "x; touch /tmp/pwned $(id).txt"
    script = build_script(
        spec(requirement_files=(f"{evil}/requirements.txt",), requirements=("numpy",)),
        TARGET,
        Path("/usr/bin/python3.11"),
        "/opt/uv",
        layer=LAYER,
    )
    checked = subprocess.run(["bash", "-n", "-c", script], capture_output=True, check=False)
    assert checked.returncode == 0, checked.stderr
    assert shlex.quote(f"{TARGET}/repo/{evil}") in script
    lines = script.splitlines()
    layered = next(
        i for i, line in enumerate(lines) if f"--constraint {LAYER}/{CONSTRAINTS}" in line
    )
    fallback = lines.index(f"  echo {shlex.quote(FALLBACK_NOTE)}")
    server = next(i for i, line in enumerate(lines) if "base-requirements.txt" in line)
    assert any(PTH in line for line in lines[:layered])
    assert layered < fallback < server  # the server packages only when the layer cannot do
    assert "--constraint" not in "\n".join(lines[fallback:])
