"""The home page's volume usage, as root measures it: the same figures mounted or not, and
never the figures of whatever a user links where their volume was."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import needs_root
from system.conftest import RunAs

from hubstack.system import volumes

pytestmark = [needs_root]

SIZE = 64 * 2**20
WRITE = 5 * 2**20

# As the user: fill a file on the mounted volume, then close it (its blocks are then counted).
FILL = "import sys\nwith open(sys.argv[1], 'wb') as f:\n    f.write(b'x' * int(sys.argv[2]))\n"

# As the user: move ~/volumes aside and link a directory of root's in its place.
LINK_VOLUMES = """
import os, sys
home, target = sys.argv[1:]
os.rename(os.path.join(home, "volumes"), os.path.join(home, "moved"))
os.symlink(target, os.path.join(home, "volumes"))
"""


@pytest.fixture
def volume(scratch: Path, free_ids: tuple[int, int]) -> tuple[int, Path, Path]:
    """A uid, its home (the user's, below root's directory) and its volume's image."""
    uid = free_ids[0]
    home = scratch / "home"
    home.mkdir()
    os.chown(home, uid, uid)
    image = scratch / "images" / "work.img"
    volumes.create_image(image, SIZE, uid, uid)
    return uid, home, image


def test_usage_is_the_same_mounted_and_from_the_image(
    volume: tuple[int, Path, Path], run_as: RunAs
) -> None:
    uid, home, image = volume
    empty = volumes.image_usage(image, below=home)
    assert empty is not None and empty[0] < WRITE < empty[1] <= SIZE
    mountpoint = home / "volumes" / "work"
    volumes.mount(image, mountpoint, uid, uid, below=home)
    try:
        done = run_as(uid, uid, FILL, str(mountpoint / "data"), str(WRITE))
        assert done.returncode == 0, done.stderr
        mounted = volumes.image_usage(image, below=home)
        assert mounted == volumes.usage(mountpoint)
        assert mounted[0] >= empty[0] + WRITE and mounted[1] == empty[1]
    finally:
        volumes.unmount(mountpoint, below=home)
    assert volumes.image_usage(image, below=home) == mounted, "the superblock agrees"


def test_a_link_where_the_volume_was_does_not_change_what_is_measured(
    scratch: Path, volume: tuple[int, Path, Path], run_as: RunAs
) -> None:
    uid, home, image = volume
    elsewhere = scratch / "root-tmpfs"
    elsewhere.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300M", "tmpfs", elsewhere], check=True)
    volumes.mount(image, home / "volumes" / "work", uid, uid, below=home)
    try:
        measured = volumes.image_usage(image, below=home)
        done = run_as(uid, uid, LINK_VOLUMES, str(home), str(elsewhere))
        assert done.returncode == 0, done.stderr
        assert volumes.image_usage(image, below=home) == measured
        assert measured is not None and measured[1] <= SIZE, "not the tmpfs's 300M"
    finally:
        volumes.unmount_image(image, below=home)
        subprocess.run(["umount", elsewhere], check=True)


def test_no_figures_for_a_missing_image_or_one_that_is_not_ext4(scratch: Path) -> None:
    assert volumes.image_usage(scratch / "none.img", below=scratch) is None
    junk = scratch / "junk.img"
    junk.write_bytes(os.urandom(4096))
    assert volumes.image_usage(junk, below=scratch) is None
