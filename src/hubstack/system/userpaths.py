"""Paths within a user's reach: root works there as the user, or through checked descriptors.

A directory its user can write may hold a symbolic link, a FIFO or anything else by the time
root looks at it, so root never resolves a path through one. Work in the user's own files
(homes, links, server directories) runs as the user, with the user's credentials; the few
steps only root can do (a directory owned by the user under a root-owned base) go through file
descriptors of directories checked to be root's, with no link followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
from pathlib import Path

from hubstack.system import NO_FOLLOW_DIR, SystemOpError, tool
from hubstack.system.accounts import Account, switch_to

AS_USER_TIMEOUT = 30.0


async def as_user(account: Account, *argv: str, timeout: float = AS_USER_TIMEOUT) -> None:
    """Run the system tool ``argv`` as ``account`` (its uid and gid, no other group), in a
    private umask and a fixed environment, and raise :class:`SystemOpError` with its error
    output if it fails or outlasts ``timeout`` seconds.

    A hub that is not root runs it as itself: it can only act within its own rights anyway.
    """
    command = [tool(argv[0]), *argv[1:]]
    if os.geteuid() == 0:
        command = [*switch_to(account), *command]
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": str(account.home)},
        cwd="/",
        umask=0o077,
        start_new_session=True,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        raise SystemOpError(
            f"{argv[0]} as {account.name} did not finish in {timeout:g} s"
        ) from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip() or f"exit code {proc.returncode}"
        raise SystemOpError(f"{argv[0]} as {account.name} failed: {detail}")


def open_root_dir(path: Path) -> int:
    """A descriptor of directory ``path``, opened component by component from ``/`` without
    following links, each component owned by root and writable by nobody else unless sticky
    (like /tmp, where only root may then rename root's entries).

    Links in the configured path itself (``/home -> /export/home``) are resolved first; after
    that no one but root can change what the components are. Raises :class:`SystemOpError`.
    """
    real = Path(os.path.realpath(path))
    fd = os.open("/", NO_FOLLOW_DIR)
    try:
        _check_root_dir(fd, Path("/"))
        for depth, part in enumerate(real.parts[1:], start=2):
            try:
                child = os.open(part, NO_FOLLOW_DIR, dir_fd=fd)
            except OSError as exc:
                raise SystemOpError(f"cannot open {real} safely: {exc.strerror}") from None
            os.close(fd)
            fd = child
            _check_root_dir(fd, Path(*real.parts[:depth]))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_root_dir(fd: int, path: Path) -> None:
    info = os.fstat(fd)
    shared = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if info.st_uid != 0 or (shared and not info.st_mode & stat.S_ISVTX):
        raise SystemOpError(
            f"{path} must belong to root and be writable by root alone: another account "
            "could change what the hub finds below it"
        )


def own_dir(parent_fd: int, name: str, account: Account, *, create: bool = True) -> int:
    """A descriptor of directory ``name`` in ``parent_fd`` (a checked root directory), made
    private to ``account`` if missing and ``create``; an existing one must be a real directory
    of the account. Raises :class:`SystemOpError`, or FileNotFoundError for a missing one
    not to be created.
    """
    if name in ("", ".", "..") or "/" in name:
        raise SystemOpError(f"not a directory name: {name!r}")
    created = False
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent_fd)
            created = True
    try:
        fd = os.open(name, NO_FOLLOW_DIR, dir_fd=parent_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SystemOpError(f"{name} is not a directory the hub can use: {exc.strerror}") from None
    try:
        if created:
            os.fchown(fd, account.uid, account.gid)
        elif os.fstat(fd).st_uid != account.uid:
            raise SystemOpError(f"{name} belongs to another account than {account.name}")
    except BaseException:
        os.close(fd)
        raise
    return fd
