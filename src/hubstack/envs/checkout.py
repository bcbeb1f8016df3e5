"""Put a repository's files into a server's volume, as the server's own account.

Each launch gets the repository at the launched commit: from the hub's mirror, or, when a
``postBuild`` changed the repository, as the build left it (as repo2docker's image would
have it). Files a user already has there are never lost: the checkout of the same commit
is kept as the user left it, and one of another commit is moved to ``<name>.previous``.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from pathlib import Path

from hubstack.envs.git import export
from hubstack.system.accounts import Account

MARKS = ".hubstack/checkouts"


@dataclass(frozen=True)
class Content:
    """A repository's files for one server, and the script its server starts through."""

    name: str
    url: str
    commit: str
    mirror: Path
    snapshot: Path | None = None
    start: str | None = None
    # Web sites whose pages may use the server (Binder clients such as thebe run there).
    allow_origins: tuple[str, ...] = ()


def _mark(volume: Path, name: str) -> Path:
    return volume / MARKS / name


async def _as_user(account: Account | None, *argv: str) -> None:
    """A small file operation in the user's own name (never root's, in their files)."""
    drop: dict[str, object] = {}
    if account is not None and os.geteuid() == 0:
        drop = {"user": account.uid, "group": account.gid, "extra_groups": []}
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, **drop
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise OSError(f"{argv[0]} failed: {err.decode(errors='replace').strip()}")


async def check_out(content: Content, volume: Path, account: Account | None) -> Path:
    """The repository's directory in ``volume``, with the content of ``content.commit``."""
    workdir = volume / content.name
    mark = _mark(volume, content.name)
    try:
        current = mark.read_text().strip()
    except OSError:
        current = None
    if workdir.exists() and current == content.commit:
        return workdir
    if workdir.exists() or workdir.is_symlink():
        previous = volume / f"{content.name}.previous"
        await _as_user(account, "rm", "-rf", "--", str(previous))
        await _as_user(account, "mv", "-T", "--", str(workdir), str(previous))
    if content.snapshot is not None:
        await _as_user(
            account,
            "cp",
            "-R",
            "--preserve=mode,timestamps",
            "--",
            str(content.snapshot),
            str(workdir),
        )
    else:
        await export(content.mirror, content.commit, workdir, user=account)
    await _as_user(account, "mkdir", "-p", "--", str(mark.parent))
    await _as_user(
        account, "sh", "-c", 'printf "%s\\n" "$1" > "$2"', "sh", content.commit, str(mark)
    )
    return workdir


def start_command(workdir: Path, content: Content, command: list[str]) -> list[str]:
    """``command`` run through the repository's ``start`` script, if it has one (which
    ends with ``exec "$@"``, as the specification asks), and open to the allowed sites."""
    if content.allow_origins:
        pattern = "|".join(re.escape(origin) for origin in content.allow_origins)
        command = [*command, f"--ServerApp.allow_origin_pat=^({pattern})$"]
    if content.start is None:
        return command
    return [
        "/bin/sh",
        "-c",
        'chmod +x "$0" 2>/dev/null; exec "$0" "$@"',
        str(workdir / content.start),
        *command,
    ]
