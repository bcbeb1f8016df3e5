"""The package store without building one: splitting pins, which wheels it holds, what an
environment's build runs to use it, and what prune keeps (the real builds: test_builds)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from hubstack.envs import store_pins
from hubstack.envs.builder import build_script
from hubstack.envs.cache import STORE_KIND, EnvCache
from hubstack.envs.package_store import (
    PTH,
    contents,
    entry_key,
    entry_meta,
    new_wheels,
    storable,
    used_entries,
    wheel_pin,
)
from unit.test_build_script import spec
from unit.test_server_layer import MONTH, entry

LAYER = Path("/srv/binder/envs/f00d")
TARGET = Path("/srv/binder/envs/abc")
FILES = ("requirements.txt",)


def test_pins_split_between_the_layer_the_store_and_uv() -> None:
    resolved = store_pins.pins("NumPy==2.1.0\n# via pandas\n\npython_dateutil==2.9.0.post0\nx==1\n")
    assert resolved == {"numpy": "2.1.0", "python-dateutil": "2.9.0.post0", "x": "1"}
    stored = {"numpy==2.1.0": "/s/numpy-2.1.0", "x==2": "/s/x-2"}
    layer = {"python-dateutil": "2.9.0.post0"}
    assert store_pins.split(resolved, stored, layer) == (["/s/numpy-2.1.0"], ["x==1"])


@pytest.mark.parametrize(
    "line", ["-e .", "./local", "pkg @ https://example.org/pkg.whl", "pkg>=1", "--index-url x"]
)
def test_anything_but_exact_pins_is_not_split(line: str) -> None:
    with pytest.raises(ValueError, match="not a pinned package"):
        store_pins.pins(f"numpy==2.1.0\n{line}\n")


def test_the_split_writes_the_pth_and_what_uv_installs(tmp_path: Path) -> None:
    (tmp_path / "map.json").write_text('{"tabulate==0.9.0": "/s/tabulate-0.9.0"}')
    (tmp_path / "layer.txt").write_text("six==1.16.0\n")
    (tmp_path / "pins.txt").write_text("six==1.16.0\ntabulate==0.9.0\ntermcolor==2.4.0\n")
    names = ["map.json", "layer.txt", "pins.txt", PTH, "rest"]
    run = [sys.executable, "-I", store_pins.__file__, *(str(tmp_path / n) for n in names)]
    done = subprocess.run(run, capture_output=True, text=True, check=True)
    assert done.stdout == "/s/tabulate-0.9.0\n"
    assert (tmp_path / "rest").read_text() == "termcolor==2.4.0\n"
    assert (tmp_path / PTH).read_text() == "import site; site.addsitedir('/s/tabulate-0.9.0')\n"
    # Read as site reads site-packages: the folder lands on sys.path, without errors.
    (tmp_path / PTH).write_text(store_pins.pth_line([str(tmp_path / "stored")]))
    (tmp_path / "stored").mkdir()
    code = f"import site, sys; site.addsitedir({str(tmp_path)!r}); print(sys.path[-1])"
    seen = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert (seen.stdout, seen.stderr) == (f"{tmp_path / 'stored'}\n", "")
    (tmp_path / "pins.txt").write_text("-e file:///repo\n")
    refused = subprocess.run(run, capture_output=True, text=True, check=False)
    assert refused.returncode == 2 and "Not using the package store" in refused.stderr


def wheel(folder: Path, name: str, *members: str) -> str:
    with zipfile.ZipFile(folder / name, "w") as archive:
        for member in members:
            archive.writestr(member, "")
    return name


def test_wheels_with_files_for_the_prefix_are_not_stored(tmp_path: Path) -> None:
    plain = wheel(tmp_path, "Plain_Pkg-1.0-py3-none-any.whl", "plain_pkg/__init__.py")
    scripts = wheel(tmp_path, "s-1.0-py3-none-any.whl", "s-1.0.data/scripts/s", "s.py")
    data = wheel(tmp_path, "ext-1.0-py3-none-any.whl", "ext-1.0.data/data/share/jupyter/x")
    headers = wheel(tmp_path, "h-1.0-py3-none-any.whl", "h-1.0.data/headers/h.h")
    man = wheel(
        tmp_path, "m-1.0-py3-none-any.whl", "m-1.0.data/data/", "m-1.0.data/data/share/man/man1/m.1"
    )
    (tmp_path / "bad-1.0-py3-none-any.whl").write_text("not a zip")
    assert storable(tmp_path / plain) and storable(tmp_path / scripts) and storable(tmp_path / man)
    assert not storable(tmp_path / data) and not storable(tmp_path / headers)
    assert not storable(tmp_path / "bad-1.0-py3-none-any.whl")
    assert wheel_pin(plain) == ("plain-pkg==1.0", "plain-pkg-1.0")
    assert wheel_pin("numpy-2.1.0.tar.bz2") is None
    kept = [plain, scripts, data, headers, "bad-1.0-py3-none-any.whl", "pkg-1-0.conda"]
    assert new_wheels(kept, {"s==1.0"}, tmp_path) == [plain]
    assert entry_key("layer", [plain, scripts]) == entry_key("layer", [scripts, plain])
    assert entry_key("layer", [plain]) != entry_key("other layer", [plain])


def test_a_build_on_the_store_resolves_first_and_falls_back_as_before() -> None:
    store = {"numpy==2.1.0": "/srv/binder/envs/5103/packages/numpy-2.1.0"}
    wheels = Path("/srv/binder/packages/wheels")
    script = build_script(
        spec(requirement_files=FILES), TARGET, Path("/usr/bin/python3"), "uv", wheels, LAYER, store
    )
    assert (
        "uv pip compile --quiet --no-header --no-annotate --python /srv/binder/envs/abc/env"
        in script
    )
    assert (
        f"--constraint {LAYER}/server-constraints.txt --find-links {wheels} -- requirements.txt"
        in script
    )
    assert "--no-deps -r /srv/binder/envs/abc/.hubstack-build/rest" in script
    # pip (and what else uv's --seed gives) is resolved with them, from the store too.
    assert "uv venv --quiet --python /usr/bin/python3" in script
    assert "-- requirements.txt /srv/binder/envs/abc/.hubstack-build/seed.txt" in script
    assert "Not using the package store" in script
    # Without a store, or for a project installed from the repository: as before.
    for plain in (
        build_script(
            spec(requirement_files=FILES), TARGET, Path("/usr/bin/python3"), "uv", wheels, LAYER
        ),
        build_script(
            spec(requirement_files=FILES, install_project=True),
            TARGET,
            Path("/usr/bin/python3"),
            "uv",
            wheels,
            LAYER,
            store,
        ),
    ):
        assert "pip compile" not in plain and "package store" not in plain
        assert "uv venv --quiet --seed" in plain


def test_prune_keeps_store_entries_in_use_or_recently_made(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path / "binder", tmp_path / "work")
    cache.create()
    now, old = time.time(), time.time() - MONTH
    entry(cache, "used", old, kind=STORE_KIND, packages={"a==1": "a-1"})
    entry(cache, "new", now, kind=STORE_KIND, packages={"b==1": "b-1"})
    entry(cache, "unused", old, kind=STORE_KIND, packages={"c==1": "c-1"})
    entry(cache, "env", now, stores=["used"])
    assert [env.key for env in cache.list()] == ["env"]
    held = contents((e.path, e.packages) for e in cache.stores())
    assert held["a==1"] == str(cache.path("used") / "packages/a-1")
    cache.prune(MONTH - 86400)
    assert {e.key for e in cache.stores()} == {"used", "new"}
    os.utime(cache.used / "env", (old, old))
    cache.prune(MONTH - 86400)
    assert {e.key for e in cache.stores()} == {"new"}


def test_an_environment_records_the_store_entries_its_pth_names(tmp_path: Path) -> None:
    site = tmp_path / "env/lib/python3.11/site-packages"
    site.mkdir(parents=True)
    entries = {"k1": tmp_path / "envs/k1", "k2": tmp_path / "envs/k2", "k10": tmp_path / "envs/k10"}
    (site / PTH).write_text(store_pins.pth_line([f"{entries['k1']}/packages/x-1"]))
    assert used_entries(tmp_path / "env", entries) == ["k1"]
    (site / PTH).unlink()
    os.mkfifo(site / PTH)  # the build chose the file: never blocks root's read
    assert used_entries(tmp_path / "env", entries) == []
    assert entry_meta(["x-1-py3-none-any.whl"]) == {"x==1": "x-1"}
    # A link on the way (lib, pythonX.Y) to a folder elsewhere is not followed either.
    elsewhere = tmp_path / "elsewhere/python3.11/site-packages"
    elsewhere.mkdir(parents=True)
    (elsewhere / PTH).write_text(store_pins.pth_line([f"{entries['k2']}/packages/y-1"]))
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked/lib").symlink_to(tmp_path / "elsewhere")
    assert used_entries(tmp_path / "linked", entries) == []
