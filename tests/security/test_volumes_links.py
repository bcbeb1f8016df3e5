"""A user's ~/volumes is theirs: links, renames and races there never make root mount, unmount
or remove anything outside that user's own storage."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pytest
import requests
from conftest import needs_default_env, needs_root
from hubtest import Hub, Session
from system.conftest import PYTHON, RunAs

from hubstack.system import SystemOpError, volumes

pytestmark = [needs_root]

SIZE = 32 * 2**20

# Moves ~/volumes aside and puts a link to root's directory in its place (the attack).
LINK_VOLUMES = """
import os, sys
home, target, aside = sys.argv[1:]
os.rename(os.path.join(home, "volumes"), os.path.join(home, aside))
os.symlink(target, os.path.join(home, "volumes"))
"""

# Swaps ~/volumes between a real directory and a link to root's directory until killed.
FLIP_VOLUMES = """
import os, sys
home, target = sys.argv[1:]
volumes, real = os.path.join(home, "volumes"), os.path.join(home, "volumes.real")
os.makedirs(volumes, exist_ok=True)
print("flipping", flush=True)
while True:
    os.rename(volumes, real)
    os.symlink(target, volumes)
    os.unlink(volumes)
    os.rename(real, volumes)
"""


Storage = tuple[int, Path, Path, Path]


@pytest.fixture
def storage(scratch: Path, free_ids: tuple[int, int]) -> Storage:
    """A uid, its home (as if mounted: the user's, below root's directory), a directory of
    root's standing in for /usr/local, and an image of the uid's to mount."""
    uid = free_ids[0]
    home, root_dir = scratch / "home", scratch / "usr-local"
    home.mkdir()
    os.chown(home, uid, uid)
    root_dir.mkdir()
    image = scratch / "images" / "vol.img"
    volumes.create_image(image, SIZE, uid, uid)
    return uid, home, root_dir, image


def account(hub: Hub, user: str) -> pwd.struct_passwd:
    return pwd.getpwnam(f"{hub.prefix}{user}")


def mounts_below(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split(" ")[4] for line in f]
    return [p for p in points if p == str(path) or p.startswith(f"{path}/")]


def failure(session: Session, server: str, resp: requests.Response) -> str:
    """The message of a start that failed, whether in the POST's answer or its progress."""
    if resp.status_code >= 400:
        return str(resp.json()["message"])
    events = session.progress(server)
    assert events[-1].get("failed"), events
    return str(events[-1]["message"])


def test_mount_lands_in_the_walked_directory_while_a_user_swaps_links(
    scratch: Path, storage: Storage
) -> None:
    """The race: between root's check of ~/volumes/x and its mount, ~/volumes becomes a link."""
    uid, home, root_dir, image = storage
    setpriv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    flipper = subprocess.Popen(
        [*setpriv, PYTHON, "-c", FLIP_VOLUMES, str(home), str(root_dir)],
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    try:
        assert flipper.stdout is not None and flipper.stdout.readline() == "flipping\n"
        mounted = 0
        for _ in range(100):
            try:
                volumes.mount(image, home / "volumes" / "sbin", uid, uid, below=home)
            except SystemOpError as exc:
                expected = ("symbolic link", "already mounted", "does not exist")
                assert any(words in str(exc) for words in expected), exc
            else:
                mounted += 1
            assert mounts_below(root_dir) == []
            assert all(p.startswith(f"{home}/") for p in mounts_below(scratch))
            volumes.unmount_image(image, below=home)
    finally:
        flipper.kill()
        flipper.wait()
    assert mounted, "the mount never found a moment without the link"
    volumes.unmount_image(image, below=home)
    assert not volumes.is_in_use(image)
    assert list(root_dir.iterdir()) == [], "root created nothing in the link's target"


# What a user may leave where root wants to mount: a link to root's directory, a FIFO.
PLANT_MOUNTPOINT = {
    "link": "os.symlink(sys.argv[2], path)",
    "fifo": "os.mkfifo(path)",
}


@pytest.mark.parametrize("kind", sorted(PLANT_MOUNTPOINT))
def test_mount_refuses_what_the_user_put_at_the_mount_point(
    scratch: Path, storage: Storage, run_as: RunAs, kind: str
) -> None:
    uid, home, root_dir, image = storage
    code = "import os, sys\npath = sys.argv[1]\nos.mkdir(os.path.dirname(path))\n"
    planted = run_as(
        uid, uid, code + PLANT_MOUNTPOINT[kind], str(home / "volumes/sbin"), str(root_dir)
    )
    assert planted.returncode == 0, planted.stderr
    with pytest.raises(SystemOpError, match="is not a directory"):
        volumes.mount(image, home / "volumes" / "sbin", uid, uid, below=home)
    assert mounts_below(scratch) == []
    assert not volumes.is_in_use(image)


@needs_default_env
@pytest.mark.e2e
def test_a_link_as_volumes_makes_the_start_fail_and_mounts_nothing_outside(
    hub: Hub, scratch: Path, run_as: RunAs
) -> None:
    dave = hub.new_user("dave")
    assert dave.start("first").status_code in (201, 202)
    dave.wait_ready("first")
    entry = account(hub, "dave")
    home = Path(entry.pw_dir)
    usr_local = scratch / "usr-local"
    (usr_local / "sbin").mkdir(parents=True)
    (usr_local / "sbin" / "tool").write_text("root's\n")
    done = run_as(entry.pw_uid, entry.pw_gid, LINK_VOLUMES, str(home), str(usr_local), "mine")
    assert done.returncode == 0, done.stderr

    resp = dave.start("sbin")
    message = failure(dave, "sbin", resp)
    assert "volumes is not a directory (a symbolic link or a file)" in message, message
    assert mounts_below(usr_local) == []
    assert (usr_local / "sbin" / "tool").read_text() == "root's\n"
    dave.api("DELETE", "/users/dave/servers/sbin", json={"remove": True})

    # The server that was running when ~/volumes moved is unmounted where it went.
    dave.stop("first", remove=True)
    assert mounts_below(home) == []
    assert not (hub.data_dir / "storage/servers" / entry.pw_name / "first.img").exists()


@needs_default_env
@pytest.mark.e2e
def test_deleting_a_server_named_like_a_root_file_touches_only_the_users_storage(
    hub: Hub, scratch: Path, run_as: RunAs
) -> None:
    erin = hub.new_user("erin")
    assert erin.start("passwd").status_code in (201, 202)
    erin.wait_ready("passwd")
    entry = account(hub, "erin")
    home = Path(entry.pw_dir)
    etc = scratch / "etc"
    (etc / "passwd").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", etc / "passwd"], check=True)
    (etc / "passwd" / "root-entry").write_text("root:x:0:0\n")
    done = run_as(entry.pw_uid, entry.pw_gid, LINK_VOLUMES, str(home), str(etc), "v")
    assert done.returncode == 0, done.stderr

    erin.stop("passwd", remove=True)
    assert mounts_below(etc) == [str(etc / "passwd")], "root's mount stays"
    assert (etc / "passwd" / "root-entry").read_text() == "root:x:0:0\n"
    assert mounts_below(home) == [], "the user's volume is unmounted where the user moved it"
    assert not (hub.data_dir / "storage/servers" / entry.pw_name / "passwd.img").exists()
