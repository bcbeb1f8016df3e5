"""Loop-mounted ext4 volumes, exercised for real (needs root and loop devices)."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hubtest import wait_for

from hubstack.system import SystemOpError
from hubstack.system.volumes import create_image, is_mounted, mount, remove_image, unmount, usage

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts need root")

SIZE = 32 * 2**20

FILL = """
import errno, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
chunk, written = b"x" * 2**20, 0
try:
    while written < 4 * int(sys.argv[2]):
        written += os.write(fd, chunk)
    os.fsync(fd)
    print("NO-ERROR", written)
except OSError as exc:
    print(errno.errorcode[exc.errno], written, exc.strerror)
"""


LISTDIR = """
import os, sys
try:
    print(os.listdir(sys.argv[1]))
except OSError as exc:
    print(type(exc).__name__)
"""


def loop_devices_of(image: Path) -> str:
    """What `losetup -j` reports for ``image`` (empty when no loop device uses it)."""
    cmd = ["losetup", "--associated", str(image)]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()


def mount_count(mountpoint: Path) -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(line.split(" ")[4] == str(mountpoint) for line in f)


@pytest.fixture
def volume(scratch: Path, free_ids: tuple[int, int]) -> tuple[Path, Path, int]:
    """A fresh (not yet mounted) image owned by a uid that has no account; returns image,
    mountpoint and uid (gid == uid)."""
    uid = free_ids[0]
    image = scratch / "images" / "vol.img"
    create_image(image, SIZE, uid, uid)
    return image, scratch / "mnt" / "home" / "vol", uid


def test_create_image_is_sparse_private_and_atomic(
    scratch: Path, free_ids: tuple[int, int]
) -> None:
    uid = free_ids[0]
    image = scratch / "a" / "b" / "vol.img"
    create_image(image, 2 * 2**30, uid, uid)
    info = image.stat()
    assert info.st_size == 2 * 2**30
    assert info.st_blocks * 512 < 16 * 2**20, "image should be sparse"
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert stat.S_IMODE((scratch / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((scratch / "a" / "b").stat().st_mode) == 0o700
    assert sorted(p.name for p in image.parent.iterdir()) == ["vol.img"], "no temp files left"
    dump = subprocess.run(
        ["dumpe2fs", "-h", str(image)], capture_output=True, text=True, check=True
    )
    assert "Filesystem magic number:  0xEF53" in dump.stdout
    assert "Reserved block count:     0\n" in dump.stdout


def test_failed_mkfs_leaves_no_image(scratch: Path) -> None:
    image = scratch / "images" / "tiny.img"
    with pytest.raises(SystemOpError, match=r"mkfs\.ext4.*failed"):
        create_image(image, 4096, 0, 0)
    assert list(image.parent.iterdir()) == []


def test_owner_can_fill_the_volume_and_gets_enospc(
    volume: tuple[Path, Path, int], run_as: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    image, mountpoint, uid = volume
    mount(image, mountpoint, uid, uid)
    result = run_as(uid, uid, FILL, str(mountpoint / "big"), str(SIZE))
    code, written, *message = result.stdout.strip().split(maxsplit=2)
    assert code == "ENOSPC", result.stdout + result.stderr
    assert message == ["No space left on device"]
    used, total = usage(mountpoint)
    assert total <= SIZE
    assert 0.5 * SIZE < int(written) <= SIZE
    assert used >= 0.95 * total
    assert (mountpoint / "big").stat().st_uid == uid


def test_mount_root_is_private_to_its_owner(
    volume: tuple[Path, Path, int],
    free_ids: tuple[int, int],
    run_as: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    image, mountpoint, uid = volume
    other = free_ids[1]
    mount(image, mountpoint, uid, uid)
    info = mountpoint.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (uid, uid, 0o700)
    # The parent is listable by anyone, so a refusal below is due to the mount root's mode.
    assert run_as(other, other, LISTDIR, str(mountpoint.parent)).stdout.strip() == "['vol']"
    assert run_as(other, other, LISTDIR, str(mountpoint)).stdout.strip() == "PermissionError"
    assert "lost+found" in run_as(uid, uid, LISTDIR, str(mountpoint)).stdout


def test_unmount_keeps_data_and_mount_unmount_are_idempotent(
    volume: tuple[Path, Path, int],
) -> None:
    image, mountpoint, uid = volume
    mount(image, mountpoint, uid, uid)
    mount(image, mountpoint, uid, uid)
    assert mount_count(mountpoint) == 1
    (mountpoint / "notes.txt").write_text("keep me")
    unmount(mountpoint)
    unmount(mountpoint)
    assert not is_mounted(mountpoint)
    assert not (mountpoint / "notes.txt").exists()
    assert loop_devices_of(image) == "", "autoclear should have released the loop device"
    create_image(image, SIZE, uid, uid)  # exists: must not reformat
    mount(image, mountpoint, uid, uid)
    assert (mountpoint / "notes.txt").read_text() == "keep me"
    unmount(mountpoint)


def test_mount_refuses_double_use(volume: tuple[Path, Path, int], scratch: Path) -> None:
    image, mountpoint, uid = volume
    mount(image, mountpoint, uid, uid)
    with pytest.raises(SystemOpError, match="already mounted at"):
        mount(image, scratch / "elsewhere", uid, uid)
    other = scratch / "images" / "other.img"
    create_image(other, SIZE, uid, uid)
    with pytest.raises(SystemOpError, match="something else is mounted there"):
        mount(other, mountpoint, uid, uid)
    with pytest.raises(SystemOpError, match="does not exist"):
        mount(scratch / "missing.img", scratch / "m2", uid, uid)
    unmount(mountpoint)


def test_remove_image_unmounts_and_releases_loop_device(volume: tuple[Path, Path, int]) -> None:
    image, mountpoint, uid = volume
    mount(image, mountpoint, uid, uid)
    assert loop_devices_of(image) != ""
    remove_image(image, mountpoint)
    assert not image.exists()
    assert not is_mounted(mountpoint)
    assert loop_devices_of(image) == ""
    remove_image(image, mountpoint)
    remove_image(image, None)


def test_remove_image_detaches_a_stale_loop_device(volume: tuple[Path, Path, int]) -> None:
    image, _, _ = volume
    cmd = ["losetup", "--find", "--show", str(image)]
    device = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    assert device in loop_devices_of(image)
    remove_image(image, None)
    assert loop_devices_of(image) == ""
    assert not image.exists()


def test_remove_image_refuses_while_mounted_elsewhere(volume: tuple[Path, Path, int]) -> None:
    image, mountpoint, uid = volume
    mount(image, mountpoint, uid, uid)
    with pytest.raises(SystemOpError, match="still mounted at"):
        remove_image(image, None)
    assert image.exists()
    unmount(mountpoint)


def test_busy_unmount_falls_back_to_lazy(volume: tuple[Path, Path, int]) -> None:
    image, mountpoint, uid = volume
    mount(image, mountpoint, uid, uid)
    holder = subprocess.Popen(["sleep", "300"], cwd=mountpoint)
    try:
        unmount(mountpoint)
        assert not is_mounted(mountpoint)
        assert loop_devices_of(image) != "", "the busy file system still pins its loop device"
    finally:
        holder.kill()
        holder.wait()
    wait_for(lambda: loop_devices_of(image) == "", 10, "the loop device to be released")
