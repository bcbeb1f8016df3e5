"""~/shared lies in a home its user owns: a link, a FIFO or a swap planted there never makes
root create, chown or mount anything outside it, and what root made there the user cannot
change."""

from __future__ import annotations

import grp
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import needs_root
from hubtest import new_test_root
from system.conftest import RunAs

from hubstack.backends.local import LocalBackend
from hubstack.config.models import Config
from hubstack.system import SystemOpError, cgroups, volumes
from hubstack.system.accounts import Account
from hubstack.system.shared_folders import SharedFolders, home_folders

pytestmark = [needs_root]

# What the user tries in ~/shared once root has prepared it; each must fail.
TAMPER = """
import os, sys
shared = sys.argv[1]
for attempt in (
    lambda: open(os.path.join(shared, "planted"), "w"),
    lambda: os.symlink("/etc", os.path.join(shared, "other")),
    lambda: os.rename(os.path.join(shared, "lab"), os.path.join(shared, "moved")),
    lambda: os.rmdir(os.path.join(shared, "lab")),
    lambda: os.chmod(shared, 0o777),
):
    try:
        attempt()
        print("allowed")
    except PermissionError:
        print("refused")
"""

Home = tuple[int, Path, Path]


@pytest.fixture
def home(scratch: Path, free_ids: tuple[int, int]) -> Home:
    """A uid, its home (the user's, below root's directory) and a directory of root's the
    attacks aim at."""
    return make_home(scratch, free_ids[0])


@pytest.fixture
def served(free_ids: tuple[int, int]) -> Iterator[tuple[Path, Home]]:
    """As :func:`home`, outside /var/tmp and /tmp (a server's namespace has its own)."""
    root = new_test_root()
    try:
        yield root, make_home(root, free_ids[0])
    finally:
        shutil.rmtree(root, ignore_errors=True)


def make_home(root: Path, uid: int) -> Home:
    home, victim = root / "home", root / "victim"
    home.mkdir()
    os.chown(home, uid, uid)
    victim.mkdir()
    return uid, home, victim


def untouched(victim: Path) -> None:
    assert os.listdir(victim) == []
    info = victim.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (0, 0, 0o755)


def test_a_link_at_home_shared_is_not_followed(home: Home) -> None:
    uid, path, victim = home
    os.symlink(victim, path / "shared")
    os.lchown(path / "shared", uid, uid)
    with pytest.raises(SystemOpError, match="does not follow"):
        home_folders(path, (uid, uid), ["lab"])
    untouched(victim)


def test_a_fifo_at_home_shared_is_refused_without_blocking(home: Home) -> None:
    uid, path, _ = home
    os.mkfifo(path / "shared")
    os.chown(path / "shared", uid, uid)
    started = time.monotonic()
    with pytest.raises(SystemOpError):
        home_folders(path, (uid, uid), ["lab"])
    assert (path / "shared").is_fifo()
    assert time.monotonic() - started < 30, "no open of the FIFO waited for a writer"


def test_a_users_own_shared_directory_with_a_link_inside_is_refused(home: Home) -> None:
    uid, path, victim = home
    (path / "shared").mkdir()
    os.chown(path / "shared", uid, uid)
    os.symlink(victim, path / "shared/lab")
    with pytest.raises(SystemOpError, match="not root's"):
        home_folders(path, (uid, uid), ["lab"])
    untouched(victim)
    assert (path / "shared/lab").is_symlink(), "the user's own files are left as they are"


def test_the_prepared_directory_is_out_of_the_users_reach(home: Home, run_as: RunAs) -> None:
    uid, path, _ = home
    assert home_folders(path, (uid, uid), ["lab", "everyone"]) is not None
    tried = run_as(uid, uid, TAMPER, str(path / "shared"))
    assert tried.returncode == 0, tried.stderr
    assert tried.stdout.split() == ["refused"] * 5
    assert sorted(os.listdir(path / "shared")) == ["everyone", "lab"]

    home_folders(path, (uid, uid), ["lab"])
    assert os.listdir(path / "shared") == ["lab"], "a folder no longer granted goes"
    home_folders(path, (uid, uid), [])
    assert not (path / "shared").exists(), "with no folder, root's directory goes"


def test_no_folders_leave_a_users_own_shared_directory_alone(home: Home) -> None:
    uid, path, _ = home
    (path / "shared/empty").mkdir(parents=True)
    for made in (path / "shared", path / "shared/empty"):
        os.chown(made, uid, uid)
    home_folders(path, (uid, uid), [])
    assert (path / "shared/empty").is_dir()


def namespace(scratch: Path, uid: int, home: Path, shared: list[str], command: str) -> str:
    """Run ``command`` as root in a server's namespace as the local backend builds it, with
    ``shared`` as :meth:`LocalBackend._share` gives it; its output, or its error."""
    config = Config.model_validate({"hub": {"data_dir": str(scratch / "data"), "limits": "off"}})
    backend = LocalBackend(config)
    account = Account("hs-sharer", uid, uid, home)
    limits = cgroups.Limits(cpu=None, memory=64 * 2**20, pids=None)
    prefix, base = backend._private_tmp(account, home / "volumes/s", limits, shared)
    try:
        run = subprocess.run(
            [*prefix, "/bin/sh", "-c", command],
            cwd=f"/proc/self/fd/{base}",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(base)
    return run.stdout + run.stderr


def test_the_namespace_mounts_folders_read_only_where_they_should(
    served: tuple[Path, Home],
) -> None:
    scratch, (uid, path, _) = served
    folders = {"lab": scratch / "lab", "team": scratch / "team"}
    for folder in folders.values():
        folder.mkdir()
    identity = home_folders(path, (uid, uid), list(folders))
    assert identity is not None
    shared = [str(path / "shared"), identity]
    shared += [str(folders["lab"]), "lab", "ro", str(folders["team"]), "team", "rw"]
    seen = namespace(
        scratch,
        uid,
        path,
        shared,
        f"touch {path}/shared/lab/x || echo lab refused; touch {path}/shared/team/y && echo "
        "team written",
    )
    assert "Read-only file system" in seen and "lab refused" in seen and "team written" in seen
    assert (folders["team"] / "y").exists() and not (folders["lab"] / "x").exists()


def test_the_namespace_refuses_a_shared_directory_swapped_after_the_check(
    served: tuple[Path, Home], run_as: RunAs
) -> None:
    scratch, (uid, path, victim) = served
    source = scratch / "lab"
    source.mkdir()
    (source / "secret").write_text("group data")
    identity = home_folders(path, (uid, uid), ["lab"])
    assert identity is not None
    # The user moves root's directory aside and links its name to a place of root's.
    os.mkdir(victim / "lab")
    swap = "import os, sys; os.rename(sys.argv[1], sys.argv[1] + '.old'); os.symlink(*sys.argv[2:])"
    moved = run_as(uid, uid, swap, str(path / "shared"), str(victim), str(path / "shared"))
    assert moved.returncode == 0, moved.stderr

    shared = [str(path / "shared"), identity, str(source), "lab", "rw"]
    seen = namespace(scratch, uid, path, shared, f"ls {victim}/lab; echo RAN")
    assert "changed while the server started" in seen
    assert "RAN" not in seen and "secret" not in seen, "nothing ran, nothing was mounted"


def test_a_mount_base_others_can_write_is_refused(scratch: Path) -> None:
    """Another account could plant a link where root mounts and chowns: refused, not used."""
    prefix = f"hs{secrets.token_hex(2)}-"
    opened = scratch / "open"
    opened.mkdir()
    os.chmod(opened, 0o777)
    config = Config.model_validate(
        {
            "hub": {"data_dir": str(scratch / "data")},
            "accounts": {"prefix": prefix},
            "groups": {"lab": {"shared": {"quota": "8M"}}},
            "policy": {"shared": {"path": str(opened / "shared")}},
        }
    )
    shared = SharedFolders(config)
    try:
        with pytest.raises(SystemOpError, match="writable by root alone"):
            shared.prepare("nobody", {"lab": False})
        assert not volumes.is_in_use(scratch / "data/storage/shared/lab.img")
    finally:
        for group in grp.getgrall():
            if group.gr_name.startswith(prefix):
                subprocess.run(["groupdel", group.gr_name], check=False)
