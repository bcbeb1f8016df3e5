"""Linux accounts for hub users: name mapping and idempotent creation."""

from __future__ import annotations

import contextlib
import fcntl
import grp
import hashlib
import os
import pwd
import re
import signal
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hubstack.system import SystemOpError, run, tool

MAX_NAME = 32
"""Longest user name useradd accepts on Linux."""

LOCK_FILE = Path("/run/lock/hubstack-accounts.lock")

_VALID_NAME = re.compile(r"^[a-z_][a-z0-9_-]*$")
_HASH_LEN = 6
# A name that already ends like a hash suffix is hashed too, so that an unchanged name can never
# look like (and collide with) the hashed form of another name.
_LOOKS_HASHED = re.compile(rf"(^|-)[0-9a-f]{{{_HASH_LEN}}}$")
_USERADD_NAME_IN_USE = 9
_GROUPADD_NAME_IN_USE = 9


def unix_name(hub_user: str, prefix: str = "hs-") -> str:
    """Map a hub user name to a valid, collision-free Linux user name.

    Names that are already lowercase ``a-z0-9`` words joined by single dashes are kept as they
    are (behind ``prefix``) so accounts stay recognisable. Anything else (case, accents, ``@``,
    dots, spaces, length) is sanitised and suffixed with a hash of the original name, which keeps
    e.g. "Alice" and "alice" apart. Kept names never end like a hash suffix, so the two forms
    cannot meet.
    """
    if not _VALID_NAME.match(prefix) or len(prefix) > MAX_NAME - _HASH_LEN - 2:
        raise ValueError(f"invalid user name prefix {prefix!r}")
    folded = unicodedata.normalize("NFKD", hub_user).encode("ascii", "ignore").decode().lower()
    stem = re.sub(r"[^a-z0-9]+", "-", folded).strip("-")
    if (
        stem
        and stem == hub_user
        and len(prefix) + len(stem) <= MAX_NAME
        and not _LOOKS_HASHED.search(stem)
    ):
        return prefix + stem
    digest = hashlib.sha256(hub_user.encode()).hexdigest()[:_HASH_LEN]
    stem = stem[: MAX_NAME - len(prefix) - _HASH_LEN - 1].rstrip("-")
    return f"{prefix}{stem}-{digest}" if stem else prefix + digest


@dataclass(frozen=True)
class Account:
    """The parts of a passwd entry the backend needs to run a server as a user."""

    name: str
    uid: int
    gid: int
    home: Path


def switch_to(account: Account, *, init_groups: bool = False) -> list[str]:
    """The command prefix that runs what follows as ``account``, with its own groups
    (``init_groups``) or none but its primary one: setpriv sets the groups, the gid, then the
    real, effective and saved uid, and execs the rest.

    Not Popen's ``user``, ``group`` and ``extra_groups``: with them CPython forks the whole
    hub (copying the page tables of a few hundred MB: about 35 ms) where it otherwise uses
    vfork (about 10 ms with setpriv's exec), and a repository launch runs several such
    commands before its server starts."""
    groups = "--init-groups" if init_groups else "--clear-groups"
    return [tool("setpriv"), f"--reuid={account.uid}", f"--regid={account.gid}", groups, "--"]


def _account(entry: pwd.struct_passwd) -> Account:
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


def ensure_account(
    name: str, home: Path, *, shell: str = "/bin/bash", group: str | None = "hubstack-users"
) -> Account:
    """Create the Linux account ``name`` unless it exists, and return it.

    The home directory is recorded but not created: the caller mounts the user's volume there.
    New accounts get a private group and, if ``group`` is given, that supplementary group
    (created on demand). An existing account is returned unchanged. A lock file serialises
    concurrent callers (threads or processes), because useradd itself fails rather than waits
    when another useradd holds /etc/passwd.
    """
    if not _VALID_NAME.match(name) or len(name) > MAX_NAME:
        raise ValueError(f"invalid Linux user name {name!r}")
    if group is not None and (not _VALID_NAME.match(group) or len(group) > MAX_NAME):
        raise ValueError(f"invalid Linux group name {group!r}")
    if not home.is_absolute():
        raise ValueError(f"home directory must be an absolute path, got {home}")
    with account_db_lock():
        try:
            return _account(pwd.getpwnam(name))
        except KeyError:
            pass
        cmd = ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", shell]
        cmd += ["--user-group"]
        if group is not None:
            _ensure_group(group)
            cmd += ["--groups", group]
        run([*cmd, name], ok_codes=(0, _USERADD_NAME_IN_USE))
        try:
            return _account(pwd.getpwnam(name))
        except KeyError:
            raise SystemOpError(f"useradd ran but account {name!r} does not exist") from None


@contextlib.contextmanager
def account_db_lock() -> Iterator[None]:
    """Hold the lock that serialises changes to /etc/passwd and /etc/group (useradd,
    groupadd, gpasswd), which fail rather than wait when another one holds the files."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with LOCK_FILE.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _ensure_group(group: str) -> None:
    """Create ``group`` if missing; another process winning the race is fine."""
    try:
        grp.getgrnam(group)
    except KeyError:
        run(["groupadd", group], ok_codes=(0, _GROUPADD_NAME_IN_USE))


def current_account() -> Account:
    """The account running this process, used when the hub spawns servers as itself (dev mode)."""
    return _account(pwd.getpwuid(os.getuid()))


def account_name(uid: int) -> str:
    """The name of ``uid``'s account, for messages: "uid N" when it has none (a removed
    account's files, a job cancelled by an account this machine does not know)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def running_processes_of(uid: int) -> list[int]:
    """Processes of ``uid`` that still run (a zombie only waits for its parent to reap it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        running = not fields.get("State", "").strip().startswith("Z")
        if running and fields.get("Uid", "").split()[:1] == [str(uid)]:
            pids.append(int(entry.name))
    return pids


def kill_processes_of(uid: int, attempts: int = 200) -> None:
    """SIGKILL everything ``uid`` runs until nothing is left, for accounts that run only
    what hubstack started (a build account, a benchmark's). Keeps killing, since a process
    may fork between two rounds (a fork bomb does nothing else)."""
    for _ in range(attempts):
        alive = running_processes_of(uid)
        if not alive:
            return
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    raise SystemOpError(f"processes of uid {uid} survive SIGKILL: {running_processes_of(uid)}")
