"""What a user can put where the hub reads a job's log: only their own regular file is read,
at most its end, and nothing there can stop or exhaust the reading thread."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from system.conftest import RunAs

from hubstack.backends.base import LOG_TAIL_BYTES, log_tail

SECRET = "root-only-9d2e71"
PLANT = r"""
import os, sys
kind, log, secret = sys.argv[1:]
if kind == "link to a root-only file":
    os.symlink(secret, log)
elif kind == "link to /dev/zero":
    os.symlink("/dev/zero", log)
elif kind == "fifo":
    os.mkfifo(log)
elif kind == "huge sparse file":
    with open(log, "wb") as f:
        f.truncate(1 << 40)
        f.seek(-20, os.SEEK_END)
        f.write(b"last line of a huge\n")
"""


def read_tail(path: Path, owner: int) -> str:
    """``log_tail`` in a thread that must finish within 10 s."""
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(log_tail(path, owner=owner)))
    reader.daemon = True
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "reading the log blocked"
    return result[0]


@pytest.fixture
def user_dir(scratch: Path, free_ids: tuple[int, int]) -> tuple[Path, int]:
    """A directory of a throwaway uid (its jobs directory), and that uid."""
    uid = free_ids[0]
    jobs = scratch / "jobs"
    jobs.mkdir()
    os.chown(jobs, uid, uid)
    return jobs, uid


@pytest.mark.parametrize(
    "kind", ["link to a root-only file", "link to /dev/zero", "fifo", "huge sparse file"]
)
def test_what_the_user_plants_is_not_read_for_them(
    user_dir: tuple[Path, int], scratch: Path, run_as: RunAs, kind: str
) -> None:
    jobs, uid = user_dir
    secret = scratch / "shadow"
    secret.write_text(f"{SECRET}\n")
    secret.chmod(0o600)
    log = jobs / "server-12.log"
    planted = run_as(uid, uid, PLANT, kind, str(log), str(secret))
    assert planted.returncode == 0, planted.stderr
    tail = read_tail(log, uid)
    assert SECRET not in tail
    assert len(tail) <= LOG_TAIL_BYTES
    if kind == "huge sparse file":
        assert tail.endswith("last line of a huge")


def test_a_file_of_another_account_is_not_read(user_dir: tuple[Path, int]) -> None:
    """A hard link or a file root left there: owned by someone else, so not the job's log."""
    jobs, uid = user_dir
    log = jobs / "server-13.log"
    log.write_text(f"{SECRET}\n")
    assert read_tail(log, uid) == ""
    assert read_tail(log, 0) == SECRET, "the hub's own log (the local backend's) is read"
