"""Per-user storage with a hard size: ext4 file systems in image files, loop-mounted.

A full volume gives its owner ENOSPC instead of filling the host's disk, and the image is one
file to back up, move or delete.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from hubstack.system import NO_FOLLOW_DIR, SystemOpError, run

_MNT_DETACH = 2
_UMOUNT_NOFOLLOW = 8
_UMOUNT_ATTEMPTS = 5
_UMOUNT_WAIT_S = 0.2
# How long a mount waits for a just-unmounted image's loop device to go (the kernel finishes
# tearing down the last namespace that held it); a longer wait is the caller's (see is_held).
_LOOP_RELEASE_TIMEOUT_S = 5.0
# How long an unmount waits for its loop device: freed at once unless another mount namespace
# still holds the file system, and then autoclear frees it whenever that one goes.
_UNMOUNT_RELEASE_WAIT_S = 1.0
_MOUNTINFO_ESCAPE = re.compile(r"\\([0-7]{3})")
_OPTIONS = "loop,nosuid,nodev"
_EXT4_MAGIC = 0xEF53
_EXT4_64BIT = 0x80  # INCOMPAT_64BIT: block counts have high 32 bits


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


def mount(
    image: Path,
    mountpoint: Path,
    uid: int,
    gid: int,
    mode: int = 0o700,
    *,
    below: Path | None = None,
) -> None:
    """Loop-mount ``image`` at ``mountpoint`` as a private directory of ``uid:gid``.

    ``below`` is the directory the caller trusts (root's, or one its user cannot replace, such
    as a mounted home); it defaults to the mount point's parent. The components after it may
    belong to the user, so they are walked without following links (see :func:`_parent`);
    missing ones are created for ``uid:gid``. The mount goes onto the directory that walk
    opened, so renaming or swapping a component meanwhile cannot move it anywhere else.

    Does nothing if this image is already mounted there. Refuses to mount an image that is
    mounted elsewhere (two mounts of one volume is a bug upstream) or to cover another mount.
    """
    if not image.is_file():
        raise SystemOpError(f"volume image {image} does not exist")
    owner = (uid, gid)
    with _parent(mountpoint, below, owner) as parent:
        spot = _mounted_here(parent, mountpoint)
        if spot is not None:
            source = _mount_source(spot)
            os.close(spot)
            if _backs(image, source):
                return
        mounted_at = _mountpoints_of(image)
        if mounted_at:
            raise SystemOpError(f"{image} is already mounted at {', '.join(mounted_at)}")
        if not _released(image):
            # A lazily unmounted volume, or one another mount namespace still holds, lives on
            # until its last holder goes; a second mount of the same file system then would
            # corrupt it.
            raise SystemOpError(
                f"{image} is still in use by a process or mount namespace that has not ended yet"
            )
        if spot is not None:
            raise SystemOpError(
                f"cannot mount {image} at {mountpoint}: something else is mounted there"
            )
        try:
            os.mkdir(mountpoint.name, 0o755, dir_fd=parent)
        except FileExistsError:
            pass
        except FileNotFoundError:  # the directory walked to was removed meanwhile
            raise SystemOpError(f"{mountpoint.parent} does not exist any more") from None
        spot = _open_dir(mountpoint.name, parent, mountpoint, owner)
        try:
            target = _fd_path(spot)
            run(["mount", "--no-canonicalize", "-t", "ext4", "-o", _OPTIONS, str(image), target])
        finally:
            os.close(spot)
        root = _mounted_here(parent, mountpoint)
        try:
            if root is None or not _backs(image, _mount_source(root)):
                raise SystemOpError(f"{image} did not end up mounted at {mountpoint}")
            os.fchown(root, uid, gid)
            os.fchmod(root, mode)
            # Shared, so that servers' own mount namespaces (slaves) see it unmounted with the
            # hub's, instead of keeping the file system alive in a copy.
            run(["mount", "--no-canonicalize", "--make-shared", _fd_path(root)])
        finally:
            if root is not None:
                os.close(root)


def unmount(mountpoint: Path, *, below: Path | None = None) -> None:
    """Unmount ``mountpoint`` (no-op if nothing is mounted) and release its loop device.

    ``below`` is as for :func:`mount`: a mount point that cannot be reached without following
    a link is left alone. A busy mount (a process still has files open there) is retried
    briefly, then detached lazily: it disappears from the tree at once and the kernel
    finishes when the last user lets go, freeing the loop device then.
    """
    with _parent(mountpoint, below) as parent:
        spot = _mounted_here(parent, mountpoint)
        if spot is None:
            return
        source = _mount_source(spot)
        os.close(spot)  # an open descriptor would keep the mount busy
        # The mount point is named through the parent's descriptor: nothing else can be
        # swapped in there, since a mount point cannot be renamed or removed. umount(8) would
        # not do: it turns a relative path into an absolute one by the directory's current
        # name, which the directory's owner can change in between.
        target = f"{_fd_path(parent)}/{mountpoint.name}"
        for _ in range(_UMOUNT_ATTEMPTS):
            failure = _umount2(target, 0)
            if failure is None:
                break
            if failure != errno.EBUSY:
                raise SystemOpError(f"cannot unmount {mountpoint}: {os.strerror(failure)}")
            time.sleep(_UMOUNT_WAIT_S)
        else:
            failure = _umount2(target, _MNT_DETACH)
            if failure is not None:
                raise SystemOpError(f"cannot detach {mountpoint}: {os.strerror(failure)}")
            return
    backing = _loop_backing_file(source)
    if backing is not None:
        _wait_loop_released(source, backing)


def is_mounted(mountpoint: Path, *, below: Path | None = None) -> bool:
    """Whether anything is mounted exactly at ``mountpoint`` (reached as for :func:`unmount`)."""
    with _parent(mountpoint, below) as parent:
        spot = _mounted_here(parent, mountpoint)
        if spot is None:
            return False
        os.close(spot)
        return True


def unmount_image(image: Path, *, below: Path) -> None:
    """Unmount ``image`` wherever it is mounted below ``below``, e.g. after its owner renamed
    a directory on the way; each mount point is reached as for :func:`unmount`."""
    for mountpoint in map(Path, _mountpoints_of(image)):
        if below in mountpoint.parents:
            unmount(mountpoint, below=below)


def open_root_owned(path: Path, below: Path, owner: tuple[int, int]) -> int:
    """An open descriptor of the directory ``path``, root's (created 0755 if missing, refused
    if it belongs to anyone else), reached from ``below`` as for :func:`mount` (missing
    directories on the way are created for ``owner``); the caller closes it.

    A root-owned directory in a user's storage holds entries the user cannot swap for links,
    so root (or a child of root started in it) may use names relative to it.
    """
    with _parent(path, below, owner) as parent:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path.name, 0o755, dir_fd=parent)
        fd = _open_dir(path.name, parent, path)
    info = os.fstat(fd)
    if info.st_uid != 0 or info.st_mode & 0o022:
        os.close(fd)
        raise SystemOpError(f"{path} is not root's; remove it, and hubstack creates it again")
    return fd


def is_in_use(image: Path) -> bool:
    """Whether ``image`` is mounted anywhere, from the kernel's tables (no user's path)."""
    return bool(_mountpoints_of(image))


def is_held(image: Path) -> bool:
    """Whether a file system of ``image`` lives on though it is mounted nowhere here: its
    loop device is still bound, held by a process with a file open there (after a lazy
    unmount) or by another mount namespace that still has it. It cannot be mounted again
    until that goes (autoclear then frees the device)."""
    return bool(_loop_devices(image)) and not _mountpoints_of(image)


def holders(image: Path) -> list[int]:
    """Processes (one per mount namespace) whose namespace still has a file system of
    ``image`` mounted: what keeps :func:`is_held` true, for the hub's log."""
    devices = set()
    for device in _loop_devices(image):
        with contextlib.suppress(OSError):
            devices.add(Path(f"/sys/block/{os.path.basename(device)}/dev").read_text().strip())
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            namespace = os.readlink(entry / "ns/mnt")
            if namespace in found:
                continue
            with open(entry / "mountinfo", encoding="utf-8", errors="surrogateescape") as f:
                if any(line.split(" ", 3)[2] in devices for line in f):
                    found[namespace] = int(entry.name)
        except OSError:
            continue
    return sorted(found.values())


def remove_image(image: Path, mountpoint: Path | None) -> None:
    """Unmount ``image`` from ``mountpoint`` (in a directory of root's) if it is mounted
    there, then delete it.

    Idempotent. Refuses while the image is still mounted somewhere else, and detaches loop
    devices left attached to it (e.g. after a crash) so no stale device pins the file.
    """
    if mountpoint is not None and is_in_use(image):
        with _parent(mountpoint, None) as parent:
            spot = _mounted_here(parent, mountpoint)
            source = "" if spot is None else _mount_source(spot)
            if spot is not None:
                os.close(spot)
        if _backs(image, source):
            unmount(mountpoint)
    still = _mountpoints_of(image)
    if still:
        raise SystemOpError(f"not deleting {image}: it is still mounted at {', '.join(still)}")
    for device in _loop_devices(image):
        run(["losetup", "--detach", device])
    image.unlink(missing_ok=True)


def usage(mountpoint: Path) -> tuple[int, int]:
    """(used, total) bytes of the file system at ``mountpoint``, for display."""
    return _statvfs_usage(os.statvfs(mountpoint))


def image_usage(image: Path, *, below: Path) -> tuple[int, int] | None:
    """(used, total) bytes of the file system in ``image``, for display; None if there is
    no such image (or it is not ext4).

    Mounted (below ``below``, reached as for :func:`unmount`, and checked to be backed by
    ``image``), from the mounted file system; else from the image's own superblock, which a
    clean unmount leaves exact. Neither follows anything its user could have replaced:
    the image is root's file in root's directory, opened without following a link.
    """
    for mountpoint in map(Path, _mountpoints_of(image)):
        if below not in mountpoint.parents:
            continue
        with _parent(mountpoint, below) as parent:
            spot = _mounted_here(parent, mountpoint)
            if spot is None:
                continue
            try:
                if _backs(image, _mount_source(spot)):
                    return _statvfs_usage(os.fstatvfs(spot))
            finally:
                os.close(spot)
    return _superblock_usage(image)


def _statvfs_usage(st: os.statvfs_result) -> tuple[int, int]:
    return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_blocks * st.f_frsize


def _superblock_usage(image: Path) -> tuple[int, int] | None:
    """(used, total) as ``statvfs`` would give them once mounted, from the ext4 superblock
    (1024 bytes at offset 1024): block counts less the file system's own overhead (which
    mkfs records), as ext4 reports them to ``statfs``.

    Read here rather than through ``dumpe2fs``: a page showing many volumes would start a
    process for each, and these are five fixed little-endian fields.
    """
    try:
        fd = os.open(image, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        block = os.pread(fd, 1024, 1024)
    finally:
        os.close(fd)
    if len(block) < 1024 or struct.unpack_from("<H", block, 0x38)[0] != _EXT4_MAGIC:
        return None
    blocks_lo, _, free_lo = struct.unpack_from("<III", block, 0x4)
    (log_size,) = struct.unpack_from("<I", block, 0x18)
    (incompat,) = struct.unpack_from("<I", block, 0x60)
    blocks_hi, _, free_hi = struct.unpack_from("<III", block, 0x150)
    (overhead,) = struct.unpack_from("<I", block, 0x248)
    if not incompat & _EXT4_64BIT:
        blocks_hi = free_hi = 0
    size = 1024 << log_size
    blocks = (blocks_hi << 32 | blocks_lo) - overhead
    free = free_hi << 32 | free_lo
    return (blocks - free) * size, blocks * size


@contextlib.contextmanager
def _parent(path: Path, below: Path | None, owner: tuple[int, int] | None = None) -> Iterator[int]:
    """An open file descriptor of ``path``'s parent, reached from the trusted ``below``.

    Every component after ``below`` is opened with ``O_NOFOLLOW|O_DIRECTORY`` relative to the
    one before, so a link, a FIFO or a device there is refused instead of followed. With
    ``owner`` (mounting), missing components are created for ``owner`` and each must be
    root's or ``owner``'s. Without, an unreachable parent yields -1 (nothing is mounted).
    """
    below = path.parent if below is None else below
    parts = path.relative_to(below).parts
    if not parts or any(part in (".", "..") for part in parts):
        raise SystemOpError(f"{path} is not a directory below {below}")
    if owner is not None:
        _make_dirs(below, 0o755)
    fds: list[int] = []
    try:
        try:
            # ``below`` is trusted: a link in it (/home -> /export/home) is the operator's.
            fds.append(os.open(below, NO_FOLLOW_DIR & ~os.O_NOFOLLOW))
            for depth, part in enumerate(parts[:-1], 1):
                shown = below.joinpath(*parts[:depth])
                if owner is not None:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fds[-1])
                        os.chown(part, *owner, dir_fd=fds[-1], follow_symlinks=False)
                    except FileExistsError:
                        pass
                    except FileNotFoundError:  # its owner moved it away meanwhile
                        raise SystemOpError(f"{shown} does not exist any more") from None
                fds.append(_open_dir(part, fds[-1], shown, owner))
        except (SystemOpError, OSError) as exc:
            if owner is not None:
                if isinstance(exc, SystemOpError):
                    raise
                raise SystemOpError(f"cannot open {below}: {exc.strerror}") from None
            fds.append(-1)
        yield fds[-1]
    finally:
        for fd in fds:
            if fd >= 0:
                os.close(fd)


def _mounted_here(parent: int, path: Path) -> int | None:
    """``path`` (in the open ``parent``) opened if something is mounted on it, else None."""
    if parent < 0:
        return None
    try:
        spot = _open_dir(path.name, parent, path)
    except SystemOpError:
        return None
    if _mount_id(spot) == _mount_id(parent):
        os.close(spot)
        return None
    return spot


def _open_dir(name: str, parent: int, shown: Path, owner: tuple[int, int] | None = None) -> int:
    """Open directory ``name`` in ``parent`` without following a link (or opening a FIFO);
    with ``owner``, it must belong to root or to ``owner``."""
    try:
        fd = os.open(name, NO_FOLLOW_DIR, dir_fd=parent)
    except FileNotFoundError:
        raise SystemOpError(f"{shown} does not exist") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise SystemOpError(
                f"{shown} is not a directory (a symbolic link or a file); hubstack does not "
                "follow it"
            ) from None
        raise SystemOpError(f"cannot open {shown}: {exc.strerror}") from None
    if owner is not None and os.fstat(fd).st_uid not in (0, owner[0]):
        os.close(fd)
        raise SystemOpError(f"{shown} belongs to another account; hubstack does not mount there")
    return fd


def _umount2(target: str, flags: int) -> int | None:
    """umount2(2) on ``target``, never following a link in its last component: the errno of
    a failure, or None. Python's os module has no umount; ctypes reaches libc's."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(target), flags | _UMOUNT_NOFOLLOW) == 0:
        return None
    return ctypes.get_errno()


def _fd_path(fd: int) -> str:
    """A path naming what ``fd`` is open on, usable by child processes run as root."""
    return f"/proc/{os.getpid()}/fd/{fd}"


def _mount_id(fd: int) -> int:
    """The id of the mount ``fd`` is on: a directory is a mount point iff it differs from
    its parent's (st_dev would miss a bind mount of the same file system)."""
    with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == "mnt_id":
                return int(value)
    raise SystemOpError("this kernel does not report mount ids in /proc/self/fdinfo")


def _mount_source(fd: int) -> str:
    """The source device of the mount ``fd`` is on (e.g. /dev/loop3)."""
    wanted = str(_mount_id(fd))
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields, _, tail = line.partition(" - ")
            if fields.split(" ", 1)[0] == wanted:
                return _unescape(tail.split(" ")[1])
    return ""


def _backs(image: Path, device: str) -> bool:
    """Whether loop ``device`` is backed by ``image``."""
    return _loop_backing_file(device) == _image_path(image)


def _image_path(image: Path) -> str:
    """``image`` as the kernel names a loop device's backing file. Images live in root's
    storage directory, so resolving their path follows nothing a user controls."""
    return os.path.realpath(image)


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
    wanted = _image_path(image)
    devices = [f"/dev/{entry.name}" for entry in Path("/sys/block").glob("loop*")]
    return sorted(d for d in devices if _loop_backing_file(d) == wanted)


def _mountpoints_of(image: Path) -> list[str]:
    """Where ``image`` is mounted through a loop device."""
    wanted = _image_path(image)
    return [mp for mp, src in _mount_table().items() if _loop_backing_file(src) == wanted]


def _released(image: Path) -> bool:
    """Whether no loop device uses ``image``, waiting a little: a file system unmounted in
    the hub's mount namespace lives on until the last server namespace holding it is gone,
    which the kernel finishes shortly after that server's last process. A start waits for
    longer holders before it mounts (see :func:`is_held`)."""
    deadline = time.monotonic() + _LOOP_RELEASE_TIMEOUT_S
    while _loop_devices(image):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _wait_loop_released(device: str, backing: str) -> None:
    """Wait briefly for autoclear to detach ``device``; detach one without autoclear ourselves.

    A device with autoclear still bound after the wait belongs to a file system that another
    mount namespace still holds: detaching cannot free it sooner, and the next mount waits
    for it instead (see :func:`is_held`), so the unmount does not.
    """
    deadline = time.monotonic() + _UNMOUNT_RELEASE_WAIT_S
    while _loop_backing_file(device) == backing:
        if time.monotonic() > deadline:
            if not _autoclear(device):
                run(["losetup", "--detach", device])
            return
        time.sleep(0.02)


def _autoclear(device: str) -> bool:
    """Whether loop ``device`` detaches itself once its file system is released."""
    name = os.path.basename(device)
    try:
        return Path(f"/sys/block/{name}/loop/autoclear").read_text().strip() == "1"
    except OSError:
        return False
