"""Fixtures for tests that change the real OS: every resource is uniquely named and cleaned up."""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# The base interpreter, not the venv: children run as uids that may not read the venv.
PYTHON = os.path.realpath(sys.executable)


def unique(kind: str) -> str:
    """A fresh name like ``hstest-vol-3f9a1c`` so parallel runs and leftovers never clash."""
    return f"hstest-{kind}-{secrets.token_hex(3)}"


RunAs = Callable[..., subprocess.CompletedProcess[str]]


def _run_as(uid: int, gid: int, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` with ``args`` as ``uid:gid`` with no supplementary groups."""
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", PYTHON, "-c", code]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=60, cwd="/", check=False
    )


@pytest.fixture
def run_as() -> RunAs:
    """``run_as(uid, gid, code, *args)``: run a Python snippet as another user."""
    return _run_as


@pytest.fixture
def free_ids() -> tuple[int, int]:
    """Two numeric ids used by no user or group; each serves as a uid and as its gid."""
    taken = {e.pw_uid for e in pwd.getpwall()} | {e.gr_gid for e in grp.getgrall()}
    candidates = [i for i in range(61000, 65000) if i not in taken]
    first, second = secrets.SystemRandom().sample(candidates, 2)
    return first, second


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory every uid may traverse (pytest's tmp_path is 0700 root), with full cleanup.

    Anything still mounted below it is unmounted and loop devices backed by files in it are
    detached, so a failing test leaves no trace.
    """
    base = Path(tempfile.mkdtemp(prefix="hstest-", dir="/var/tmp"))
    base.chmod(0o755)
    yield base
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split(" ")[4] for line in f]
    for mountpoint in reversed(mounts):
        if mountpoint.startswith(f"{base}/"):
            subprocess.run(["umount", "--lazy", mountpoint], check=False)
    listing = subprocess.run(
        ["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    for line in listing.splitlines():
        name, _, backing = line.strip().partition(" ")
        if backing.strip().startswith(f"{base}/"):
            subprocess.run(["losetup", "--detach", name], check=False)
    shutil.rmtree(base, ignore_errors=True)
