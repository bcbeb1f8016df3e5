"""A build's own files never become root's dangerous files, and a build stays in its limits.

An ordinary account watches ``binder.root`` during a whole build whose postBuild plants a
setuid shell, a FIFO, a socket and a world-writable folder: it must never see a set-id bit,
a special file or anything writable by another account than root. Writes to the host's
temporary folders count against the build's size limit.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
from pathlib import Path

import pytest
from system.conftest import PYTHON
from system.test_builds import TABULATE, Site, site

__all__ = ["site"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="builds run as their own account")

WATCH = r"""
import json, os, stat, sys
root, stop = sys.argv[1], sys.argv[2]
seen, rounds = set(), 0

def look(path):
    try:
        info = os.lstat(path)
    except OSError:
        return
    mode = info.st_mode
    if mode & (stat.S_ISUID | stat.S_ISGID):
        seen.add(f"set-id {path}")
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
        seen.add(f"special {path}")
    if not stat.S_ISLNK(mode) and (info.st_uid != 0 or mode & 0o022):
        seen.add(f"writable {path} uid={info.st_uid} mode={oct(mode)}")

while True:
    done = os.path.exists(stop)
    look(root)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            look(os.path.join(folder, name))
    rounds += 1
    if done:
        break
print(json.dumps({"rounds": rounds, "seen": sorted(seen)}))
"""

POISON = """#!/bin/bash
set -e
cp /bin/sh "$(dirname "$(command -v python)")/planted-shell"
chmod 6755 "$(dirname "$(command -v python)")/planted-shell"
cp /bin/sh planted-shell
chmod 4755 planted-shell
mkfifo planted-fifo
python3 -c "import socket; socket.socket(socket.AF_UNIX).bind('planted-socket')"
mkdir -m 777 open-folder
chmod 777 .
dd if=/dev/zero of=big bs=1M count=300 status=none
"""


def test_an_ordinary_account_never_sees_set_id_special_or_writable_files(
    site: Site, free_ids: tuple[int, int], scratch: Path
) -> None:
    name = site.repo({"postBuild": POISON, "README.md": "poison\n"}, executable=("postBuild",))
    (site.root / "binder").mkdir(exist_ok=True)
    stop = scratch / "stop"
    uid = free_ids[0]
    argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", PYTHON, "-c", WATCH]
    watcher = subprocess.Popen(
        [*argv, str(site.root / "binder"), str(stop)], stdout=subprocess.PIPE, text=True, cwd="/"
    )
    try:
        prepared, _ = site.prepare(name, size="2G")
    finally:
        stop.touch()
        out, _ = watcher.communicate(timeout=300)
    report = json.loads(out)
    assert report["rounds"] > 1
    assert report["seen"] == []
    snapshot = prepared.env.snapshot
    assert snapshot is not None
    shell = snapshot / "planted-shell"
    assert shell.stat().st_mode & 0o7777 == 0o755 and shell.stat().st_uid == 0
    assert not (prepared.env.prefix / "bin/planted-shell").stat().st_mode & 0o6000
    assert not (snapshot / "planted-fifo").exists()
    assert not (snapshot / "planted-socket").exists()
    log = (site.root / "binder/logs" / f"{prepared.env.key}.log").read_text()
    assert "planted-fifo" in log.splitlines()[-1] and "planted-socket" in log.splitlines()[-1]
    assert (snapshot / "open-folder").stat().st_mode & 0o777 == 0o755
    assert prepared.env.path.stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("folder", ["/tmp", "/var/tmp", "/dev/shm"])
def test_temporary_files_count_against_the_size_limit(site: Site, folder: str) -> None:
    host_file = Path(folder) / f"hubstack-fill-{secrets.token_hex(4)}"
    fill = f"#!/bin/sh\nset -e\ndd if=/dev/zero of={host_file} bs=1M count=1024 status=none\n"
    name = site.repo({"postBuild": fill}, executable=("postBuild",))
    try:
        # The environment alone fits (see test_builds, also its server layer); with the file
        # written, it does not.
        message = site.refused(name, size="1G")
        assert "size limit of 1G" in message
        assert not host_file.exists()
    finally:
        host_file.unlink(missing_ok=True)


TAMPER = """#!/bin/bash
layer=$(python -c 'import jupyterlab, os; print(os.path.dirname(jupyterlab.__path__[0]))')
echo "layer site-packages: $layer"
try() { if eval "$1" 2>/dev/null; then echo "TAMPERED: $1"; fi; }
try 'echo "import os" >> "$layer/jupyterlab/__init__.py"'
try 'echo planted > "$layer/planted.pth"'
try 'rm -f "$layer/../../../bin/jupyterhub-singleuser"'
try 'echo "jupyterlab==0.1" > "$layer/../../../../server-constraints.txt"'
try 'mv "$layer/ipykernel" "$layer/ipykernel.moved"'
"""


def test_a_build_cannot_change_the_shared_server_layer(site: Site) -> None:
    """The layer every later environment runs its server from is root's and read-only to
    builds: a postBuild that tries to change it changes nothing (its own environment is
    its own)."""
    name = site.repo({"postBuild": TAMPER}, executable=("postBuild",))
    prepared, events = site.prepare(name)
    log = [message for _, message in events]
    assert any(line.startswith("layer site-packages: ") for line in log), log
    assert not [line for line in log if line.startswith("TAMPERED")], log
    layer = prepared.env.layer_prefix
    assert layer is not None
    [site_packages] = layer.glob("lib/python*/site-packages")
    assert "import os" not in (site_packages / "jupyterlab/__init__.py").read_text()
    assert not (site_packages / "planted.pth").exists()
    assert (site_packages / "ipykernel").is_dir() and (
        layer / "bin/jupyterhub-singleuser"
    ).is_file()
    assert "jupyterlab==0.1" not in (layer.parent / "server-constraints.txt").read_text()


STORE_TAMPER = """#!/bin/bash
stored=$(python -c 'import os, tabulate; print(os.path.dirname(tabulate.__path__[0]))')
echo "stored at: $stored"
try() { if eval "$1" 2>/dev/null; then echo "TAMPERED: $1"; fi; }
try 'echo "# planted" >> "$stored/tabulate/__init__.py"'
try 'echo planted > "$stored/planted.pth"'
try 'touch -d 2001-01-01 "$stored/tabulate/__init__.py"'
try 'rm -r "$stored/tabulate/__pycache__"'
try 'mv "$stored/tabulate" "$stored/tabulate.moved"'
try 'echo "{}" > "$stored/../../meta.json"'
"""


def test_a_build_cannot_change_a_package_store_entry(site: Site) -> None:
    """What the store holds is referenced by every later environment of its packages: a
    postBuild that uses a stored package cannot change it, and the entry is root's, with
    nothing writable by another account."""
    site.prepare(site.repo({"requirements.txt": f"{TABULATE}\n# kept\n"}), settle=True)
    files = {"requirements.txt": f"{TABULATE}\n", "postBuild": STORE_TAMPER}
    prepared, events = site.prepare(site.repo(files, executable=("postBuild",)))
    log = [message for _, message in events]
    assert any(line.startswith("stored at: ") for line in log), log
    assert not [line for line in log if line.startswith("TAMPERED")], log
    [key] = prepared.env.stores
    entry = prepared.env.path.with_name(key)
    before = {line.split(": ", 1)[1] for line in log if line.startswith("stored at: ")}
    [stored] = before
    assert stored.startswith(f"{entry}/packages/")
    assert "# planted" not in Path(stored, "tabulate/__init__.py").read_text()
    assert Path(stored, "tabulate/__pycache__").is_dir()
    assert not Path(stored, "planted.pth").exists()
    assert json.loads((entry / "meta.json").read_text())["kind"] == "packages"
    for folder, dirs, names in os.walk(entry):
        for name in [".", *dirs, *names]:
            info = os.lstat(os.path.join(folder, name))
            assert info.st_uid == 0 and not info.st_mode & 0o6000, (folder, name)
            assert stat.S_ISLNK(info.st_mode) or not info.st_mode & 0o022, (folder, name)
