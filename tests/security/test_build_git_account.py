"""Git and tar handle a repository's data (packs from a server that is not ours, a tree made
by anybody) as an unprivileged account, never as root: every git and tar process of a whole
launch (resolve, fetch, inspection, build) is looked at in /proc as it starts."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from system.test_builds import Site, site

__all__ = ["site"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="builds run as their own account")


def running(pid: int, name: str) -> str | None:
    """The status of process ``pid`` once it runs ``name``; None if it ended before."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return None
        if status.startswith(f"Name:\t{name}\n"):
            return status
        if "State:\tZ" in status:
            return None
    raise AssertionError(f"process {pid} did not run {name} within 10 s")


def test_no_git_or_tar_process_runs_as_root(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, list[int]]] = []
    spawn = asyncio.create_subprocess_exec

    async def observed(program: str, *args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        proc = await spawn(program, *args, **kwargs)
        argv = [program, *args]
        if Path(program).name == "setpriv":  # switches ids, then runs what follows "--"
            argv = argv[argv.index("--") + 1 :]
        name = Path(argv[0]).name
        if name in ("git", "tar"):
            status = running(proc.pid, name)
            if status is None:
                return proc  # already gone: the quickest calls (git cat-file) may be
            line = next(x for x in status.splitlines() if x.startswith("Uid:"))
            seen.append((name, [int(uid) for uid in line.split()[1:]]))
        return proc

    monkeypatch.setattr(asyncio, "create_subprocess_exec", observed)
    # Larger than a pipe's buffer: git archive is still writing when tar starts.
    files = {"data.bin": secrets.token_hex(200_000), "requirements.txt": "# nothing\n"}
    site.prepare(site.repo(files, executable=()))
    names = {name for name, _ in seen}
    assert {"git", "tar"} <= names
    as_root = [(name, uids) for name, uids in seen if 0 in uids]
    assert as_root == []
