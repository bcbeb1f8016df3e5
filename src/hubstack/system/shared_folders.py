"""Groups' shared folders: one ext4 image per folder, Unix groups for who reads and writes.

Each group with ``shared`` in the config gets ``<mounts>/<group>``, and ``policy.shared.
everyone`` gets ``<mounts>/everyone``: a loop-mounted image of its own quota (see
:mod:`hubstack.system.volumes`), so a full folder gives its writer ENOSPC and fills nothing
else. Access is plain Unix permissions, so it holds for every process of an account
(terminals, kernels, Slurm jobs), not only for what the hub shows:

- a group folder belongs to ``root:<prefix><group>_r`` (its readers: members and champions)
  with mode ``2770``, and a POSIX ACL gives ``<prefix><group>_w`` (its champions) ``rwx``;
  the same entries as default ACL and the setgid bit make everything champions create there
  readable by the readers and writable by the other champions, whatever their umask;
- ``everyone`` belongs to ``root:<prefix>everyone_w`` (the hub's admins), mode ``2775``,
  readable by every account.

Why these names cannot collide: the accounts hubstack creates are ``<prefix><stem>`` where
the stem holds only ``a-z``, ``0-9`` and ``-`` (see :func:`accounts.unix_name`), and each
has a private group of the same name. A folder's groups end in ``_r`` or ``_w``, an
underscore no stem has, so they are never such a name. Existing machine accounts (PAM) may
be named anything: a group that is also an account's name is refused, not used.

Membership follows the hub: :meth:`SharedFolders.prepare` sets the account's
supplementary groups among these (and only these) from the user's JupyterHub groups when a
server starts, so a member removed from a group loses the folder at the next start.

Root makes the images under ``<data_dir>/storage/shared`` (root's only) and mounts them
under ``<mounts>``, a root-owned directory (on Slurm, ``backend.slurm.shared.groups``, which
every node sees); it never follows a path a user can write. The home side (``~/shared``) is
:func:`home_folders`.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import stat
import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from hubstack.config import Config
from hubstack.config.groups import CHAMPIONS_SUFFIX
from hubstack.system import NO_FOLLOW_DIR, SystemOpError, run, userpaths, volumes
from hubstack.system.accounts import MAX_NAME, account_db_lock

EVERYONE = "everyone"
HOME_DIR = "shared"  # ~/shared/<folder>
_HASH_LEN = 6
_GROUPADD_NAME_IN_USE = 9


def unix_group(prefix: str, folder: str, role: str) -> str:
    """The Unix group of ``folder``'s readers (``role`` "r") or writers ("w"); see the
    module docstring for why it is never an account's name. Too long a name keeps a hash of
    the folder's name, as account names do."""
    name = f"{prefix}{folder}_{role}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(folder.encode()).hexdigest()[:_HASH_LEN]
    keep = MAX_NAME - len(prefix) - _HASH_LEN - len(f"-_{role}")
    stem = f"{folder[:keep]}-{digest}" if keep > 0 else digest
    return f"{prefix}{stem}_{role}"


@dataclass(frozen=True)
class Folder:
    """One shared folder and the Unix groups that may use it."""

    name: str  # the group's name, or "everyone"
    quota: int
    writers: str
    readers: str | None  # None: every account may read


def folders(config: Config) -> dict[str, Folder]:
    """Every shared folder the config asks for, by name."""
    prefix = config.accounts.prefix
    found = {
        name: Folder(
            name,
            group.shared.quota,
            unix_group(prefix, name, "w"),
            unix_group(prefix, name, "r"),
        )
        for name, group in config.groups.items()
        if group.shared is not None
    }
    everyone = config.policy.shared.everyone
    if everyone is not None:
        found[EVERYONE] = Folder(EVERYONE, everyone.quota, unix_group(prefix, EVERYONE, "w"), None)
    return found


def grants(config: Config, hub_groups: Iterable[str], admin: bool) -> dict[str, bool]:
    """The folders a user in JupyterHub groups ``hub_groups`` sees, each with whether they
    may write it: members read their group's, its champions (``<G>-champions``) write it;
    everyone reads ``everyone`` and admins write it."""
    groups = set(hub_groups)
    seen: dict[str, bool] = {}
    for name in folders(config):
        if name == EVERYONE:
            seen[name] = admin
        elif name + CHAMPIONS_SUFFIX in groups:
            seen[name] = True
        elif name in groups:
            seen[name] = False
    return seen


def mount_base(config: Config) -> Path:
    """Where the folders are mounted: a path every Slurm node sees, or one on the hub."""
    if config.backend.type == "slurm" and config.backend.slurm.shared.groups is not None:
        return config.backend.slurm.shared.groups
    return config.policy.shared.path or config.hub.data_dir / "shared"


class SharedFolders:
    """The hub's shared folders: made and mounted on first use, joined at each start."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.folders = folders(config)
        self.images = config.hub.data_dir / "storage/shared"
        self.mounts = mount_base(config)
        self._lock = threading.Lock()

    def grants(self, hub_groups: Iterable[str], admin: bool) -> dict[str, bool]:
        return grants(self.config, hub_groups, admin)

    def path(self, name: str) -> Path:
        return self.mounts / name

    def prepare(self, account: str, granted: dict[str, bool]) -> None:
        """Mount the ``granted`` folders and make ``account``'s supplementary groups among
        the folders' groups exactly those ``granted`` gives. Blocking; as root."""
        with self._lock:
            for name in granted:
                self._ensure(self.folders[name])
        wanted: set[str] = set()
        for name, writable in granted.items():
            folder = self.folders[name]
            if folder.readers is not None:
                wanted.add(folder.readers)
            if writable:
                wanted.add(folder.writers)
        managed = {g for f in self.folders.values() for g in (f.readers, f.writers) if g}
        set_membership(account, wanted, managed)

    def _ensure(self, folder: Folder) -> None:
        """Create the folder's groups and image if missing, mount it and set its
        permissions (again each time: a recreated group may have a new gid).

        The mount base must be root's alone up from ``/`` (checked, not assumed), and the
        folder's root is then changed through a descriptor opened without following links.
        """
        writers = ensure_unix_group(folder.writers)
        owner = writers if folder.readers is None else ensure_unix_group(folder.readers)
        image = self.images / f"{folder.name}.img"
        volumes.create_image(image, folder.quota, 0, owner)
        self.mounts.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.close(userpaths.open_root_dir(self.mounts))
        volumes.mount(image, self.path(folder.name), 0, owner, mode=0o2770)
        if folder.readers is None:
            entries = "u::rwx,g::rwx,o::r-x"
        else:
            entries = f"u::rwx,g::r-x,g:{writers}:rwx,m::rwx,o::---"
        default = ",".join(f"d:{entry}" for entry in entries.split(","))
        base = userpaths.open_root_dir(self.mounts)
        try:
            root = os.open(folder.name, NO_FOLLOW_DIR, dir_fd=base)
        finally:
            os.close(base)
        try:
            os.fchown(root, 0, owner)
            # setfacl (the acl package) writes the ACL xattrs, a format better left to the
            # library that defines it; it is given the descriptor's path, not a name.
            run(["setfacl", "--set", f"{entries},{default}", f"/proc/{os.getpid()}/fd/{root}"])
            os.fchmod(root, stat.S_IMODE(os.fstat(root).st_mode) | stat.S_ISGID)
        finally:
            os.close(root)


def ensure_unix_group(name: str) -> int:
    """The gid of Unix group ``name``, created if missing; a group that is also an
    account's name (an existing machine account's private group) is refused."""
    with account_db_lock():
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            raise SystemOpError(
                f"{name} is a Unix account's name; hubstack does not use its group for a "
                "shared folder (rename the account or the hub group)"
            )
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            run(["groupadd", name], ok_codes=(0, _GROUPADD_NAME_IN_USE))
        return grp.getgrnam(name).gr_gid


def set_membership(account: str, wanted: Collection[str], managed: Collection[str]) -> None:
    """Make ``account`` a member of the ``wanted`` groups and of no other ``managed`` one;
    groups outside ``managed`` stay as they are. Missing managed groups are skipped."""
    with account_db_lock():
        for name in sorted(managed):
            try:
                members = grp.getgrnam(name).gr_mem
            except KeyError:
                continue
            if name in wanted and account not in members:
                run(["gpasswd", "--add", account, name])
            elif name not in wanted and account in members:
                run(["gpasswd", "--delete", account, name])


def home_folders(home: Path, owner: tuple[int, int], names: Collection[str]) -> str | None:
    """Make ``~/shared`` hold an empty directory for each of ``names`` (where a server's
    namespace mounts the folders) and nothing else, and return its ``device:inode``; with
    no ``names``, remove it and return None.

    ``~/shared`` is root's (0755) in the user's home: opened without following links from
    the trusted ``home`` (see :func:`volumes.open_root_owned`), so a link or FIFO planted
    there is refused, and the user cannot add or replace anything inside. The identity
    lets whoever enters it later by path check that it is still this directory.
    """
    if not names:
        _remove_home_dir(home)
        return None
    fd = volumes.open_root_owned(home / HOME_DIR, home, owner)
    try:
        for name in names:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=fd)
        for entry in os.listdir(fd):
            if entry not in names:
                _remove_empty(fd, entry)
        info = os.fstat(fd)
    finally:
        os.close(fd)
    return f"{info.st_dev}:{info.st_ino}"


def _remove_home_dir(home: Path) -> None:
    """Remove a root-owned ``~/shared`` left from earlier starts (only its empty
    directories, which only root can have made); a user's own is left alone."""
    try:
        home_fd = os.open(home, NO_FOLLOW_DIR & ~os.O_NOFOLLOW)
    except OSError:
        return
    try:
        fd = os.open(HOME_DIR, NO_FOLLOW_DIR, dir_fd=home_fd)
    except OSError:
        os.close(home_fd)
        return
    try:
        if os.fstat(fd).st_uid != 0:
            return
        for entry in os.listdir(fd):
            _remove_empty(fd, entry)
        _remove_empty(home_fd, HOME_DIR)
    finally:
        os.close(fd)
        os.close(home_fd)


def _remove_empty(parent: int, name: str) -> None:
    """rmdir ``name`` in ``parent``: only an empty directory goes, and no link is followed."""
    with contextlib.suppress(OSError):
        os.rmdir(name, dir_fd=parent)
