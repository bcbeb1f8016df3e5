"""Per-user storage with a hard size: ext4 file systems in image files, loop-mounted.

A full volume gives its owner ENOSPC instead of filling the host's disk, and the image is one
file to back up, move or delete.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from pathlib import Path

from hubstack.system import SystemOpError, run

_UMOUNT_FAILED = 32
_UMOUNT_ATTEMPTS = 5
_UMOUNT_WAIT_S = 0.2
_LOOP_RELEASE_TIMEOUT_S = 5.0
_MOUNTINFO_ESCAPE = re.compile(r"\\([0-7]{3})")


def create_image(image: Path, size: int, uid: int, gid: int) -> None:
    """Create an empty ext4 image of ``size`` bytes whose root belongs to ``uid:gid``.

    Does nothing if ``image`` exists. The file is sparse and mkfs skips zeroing, so this is
    quick even for large sizes. It is built under a temporary name and linked into place, so a
    failed mkfs leaves nothing behind and an image that appeared meanwhile is never replaced.
    """
    if image.exists():
        return
    _make_dirs(image.parent, 0o700)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{image.name}.", suffix=".partial", dir=image.parent)
    tmp = Path(tmp_name)
    try:
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        options = f"root_owner={uid}:{gid},lazy_itable_init=1,lazy_journal_init=1"
        run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", options, str(tmp)])
        with contextlib.suppress(FileExistsError):
            os.link(tmp, image)
    finally:
        tmp.unlink(missing_ok=True)


def mount(image: Path, mountpoint: Path, uid: int, gid: int, mode: int = 0o700) -> None:
    """Loop-mount ``image`` at ``mountpoint`` as a private directory of ``uid:gid``.

    Does nothing if this image is already mounted there. Refuses to mount an image that is
    mounted elsewhere (two mounts of one volume is a bug upstream) or to cover another mount.
    """
    if not image.is_file():
        raise SystemOpError(f"volume image {image} does not exist")
    target = _real(mountpoint)
    mounted_at = _mountpoints_of(image)
    if target in mounted_at:
        return
    if mounted_at:
        raise SystemOpError(f"{image} is already mounted at {', '.join(mounted_at)}")
    if _loop_devices(image):
        # A lazily unmounted volume stays open until its last process exits; a second
        # mount of the same file system then would corrupt it.
        raise SystemOpError(f"{image} is still in use by a process that has not exited yet")
    if is_mounted(mountpoint):
        raise SystemOpError(f"cannot mount {image} at {target}: something else is mounted there")
    _make_dirs(Path(target), 0o755)
    run(["mount", "-t", "ext4", "-o", "loop,nosuid,nodev", str(image), target])
    os.chown(target, uid, gid)
    os.chmod(target, mode)


def unmount(mountpoint: Path) -> None:
    """Unmount ``mountpoint`` (no-op if nothing is mounted) and release its loop device.

    A busy mount (a process still has files open there) is retried briefly, then detached
    lazily: it disappears from the tree at once and the kernel finishes when the last user
    lets go, freeing the loop device then.
    """
    target = _real(mountpoint)
    source = _mount_table().get(target)
    if source is None:
        return
    backing = _loop_backing_file(source)
    for _ in range(_UMOUNT_ATTEMPTS):
        proc = run(["umount", target], ok_codes=(0, _UMOUNT_FAILED))
        if proc.returncode == 0:
            break
        if "busy" not in proc.stderr:
            raise SystemOpError(f"cannot unmount {target}: {proc.stderr.strip()}")
        time.sleep(_UMOUNT_WAIT_S)
    else:
        run(["umount", "--lazy", target])
        return
    if backing is not None:
        _wait_loop_released(source, backing)


def is_mounted(mountpoint: Path) -> bool:
    """Whether anything is mounted exactly at ``mountpoint``."""
    return _real(mountpoint) in _mount_table()


def remove_image(image: Path, mountpoint: Path | None) -> None:
    """Unmount ``image`` from ``mountpoint`` if it is mounted there, then delete it.

    Idempotent. Refuses while the image is still mounted somewhere else, and detaches loop
    devices left attached to it (e.g. after a crash) so no stale device pins the file.
    """
    if mountpoint is not None and _real(mountpoint) in _mountpoints_of(image):
        unmount(mountpoint)
    still = _mountpoints_of(image)
    if still:
        raise SystemOpError(f"not deleting {image}: it is still mounted at {', '.join(still)}")
    for device in _loop_devices(image):
        run(["losetup", "--detach", device])
    image.unlink(missing_ok=True)


def usage(mountpoint: Path) -> tuple[int, int]:
    """(used, total) bytes of the file system at ``mountpoint``, for display."""
    st = os.statvfs(mountpoint)
    return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_blocks * st.f_frsize


def _real(path: Path) -> str:
    return os.path.realpath(path)


def _make_dirs(path: Path, mode: int) -> None:
    """Create missing directories up to ``path`` with ``mode`` exactly (umask ignored)."""
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        directory.chmod(mode)


def _mount_table() -> dict[str, str]:
    """Mount point -> source device of this mount namespace; the top mount wins."""
    table: dict[str, str] = {}
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields, _, tail = line.partition(" - ")
            mountpoint = fields.split(" ")[4]
            source = tail.split(" ")[1]
            table[_unescape(mountpoint)] = _unescape(source)
    return table


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (space, tab, newline, backslash)."""
    return _MOUNTINFO_ESCAPE.sub(lambda m: chr(int(m[1], 8)), field)


def _loop_backing_file(device: str) -> str | None:
    """The file behind loop ``device`` (e.g. /dev/loop3), or None if it is not a loop device."""
    name = os.path.basename(device)
    if not name.startswith("loop"):
        return None
    try:
        text = Path(f"/sys/block/{name}/loop/backing_file").read_text().rstrip("\n")
    except OSError:
        return None
    return text.removesuffix(" (deleted)")


def _loop_devices(image: Path) -> list[str]:
    """Loop devices currently backed by ``image``."""
    wanted = _real(image)
    devices = [f"/dev/{entry.name}" for entry in Path("/sys/block").glob("loop*")]
    return sorted(d for d in devices if _loop_backing_file(d) == wanted)


def _mountpoints_of(image: Path) -> list[str]:
    """Where ``image`` is mounted through a loop device."""
    wanted = _real(image)
    return [mp for mp, src in _mount_table().items() if _loop_backing_file(src) == wanted]


def _wait_loop_released(device: str, backing: str) -> None:
    """Wait for autoclear to detach ``device``; detach it ourselves if it does not."""
    deadline = time.monotonic() + _LOOP_RELEASE_TIMEOUT_S
    while _loop_backing_file(device) == backing:
        if time.monotonic() > deadline:
            run(["losetup", "--detach", device])
            return
        time.sleep(0.02)
