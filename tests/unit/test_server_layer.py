"""The shared server layer without building one: the copies of its scripts, the Jupyter
paths of a launch on it, and what prune keeps (its build's shell: test_build_script.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from hubstack.envs.cache import LAYER_KIND, EnvCache
from hubstack.envs.layout import search_paths
from hubstack.envs.server_layer import COPY_SCRIPTS

LAYER = Path("/srv/binder/envs/f00d")
TARGET = Path("/srv/binder/envs/abc")
MONTH = 31 * 86400


def test_the_layers_scripts_run_with_the_environments_python(tmp_path: Path) -> None:
    layer, env = tmp_path / "layer/bin", tmp_path / "env/bin"
    layer.mkdir(parents=True)
    env.mkdir(parents=True)
    old, new = str(layer / "python"), str(env / "python")
    (layer / "jupyter").write_text(f"#!{old}\nimport sys\n")
    (layer / "long").write_text(f"#!/bin/sh\n'''exec' '{old}' \"$0\" \"$@\"\n' '''\nx = '{old}'\n")
    (layer / "ipython").write_text(f"#!{old}\n")
    (env / "ipython").write_text("the repository's own\n")
    (layer / "activate").write_text("not a script of its Python\n")
    (layer / "link").symlink_to("/etc/shadow")
    subprocess.run([sys.executable, "-c", COPY_SCRIPTS, str(layer), old, new], check=True)
    assert sorted(p.name for p in env.iterdir()) == ["ipython", "jupyter", "long"]
    assert (env / "jupyter").read_text() == f"#!{new}\nimport sys\n"
    # Only the first two lines name the interpreter; the rest is the script's own.
    assert (env / "long").read_text().splitlines()[1:] == [
        f"'''exec' '{new}' \"$0\" \"$@\"",
        "' '''",
        f"x = '{old}'",
    ]
    assert (env / "ipython").read_text() == "the repository's own\n"
    assert os.stat(env / "jupyter").st_mode & 0o777 == 0o755


def test_a_launch_on_a_layer_finds_its_jupyter_data_and_config() -> None:
    prefix, home = TARGET / "env", Path("/home/ann")
    plain = search_paths(prefix, home, None, False)
    layered = search_paths(prefix, home, None, False, LAYER / "env")
    assert layered == plain | {
        "JUPYTER_PATH": f"{LAYER}/env/share/jupyter",
        "JUPYTER_CONFIG_PATH": f"{LAYER}/env/etc/jupyter",
        "JUPYTERLAB_DIR": f"{LAYER}/env/share/jupyter/lab",
    }


def entry(cache: EnvCache, key: str, used: float, **meta: str) -> None:
    (cache.path(key) / "env").mkdir(parents=True)
    fields = {"repo": f"git://x/{key}", "ref": "main", "commit": "c", "python": "3.11"}
    cache.complete(key, {**fields, "kind": "requirements", **meta})
    os.utime(cache.used / key, (used, used))


def test_prune_keeps_a_layer_while_an_environment_uses_it(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path / "binder", tmp_path / "work")
    cache.create()
    now, old = time.time(), time.time() - MONTH
    entry(cache, "layer1", old, kind=LAYER_KIND, repo="server layer for Python 3.11")
    entry(cache, "layer2", now, kind=LAYER_KIND, repo="server layer for Python 3.11")
    entry(cache, "recent", now, layer="layer1")
    entry(cache, "stale", old, layer="layer1")
    entry(cache, "plain", now)
    assert {env.key for env in cache.list()} == {"plain", "recent", "stale"}
    assert json.loads((cache.path("recent") / "meta.json").read_text())["layer"] == "layer1"
    recent = cache.get("recent")
    assert recent is not None and recent.layer_prefix == cache.path("layer1") / "env"

    removed = cache.prune(MONTH - 86400)
    assert [env.key for env in removed] == ["stale"]
    assert {env.key for env in cache.layers()} == {"layer1"}  # layer2: nothing uses it

    os.utime(cache.used / "recent", (old, old))
    cache.prune(MONTH - 86400)
    assert cache.layers() == [] and not cache.path("layer1").exists()
    assert [env.key for env in cache.list()] == ["plain"]
