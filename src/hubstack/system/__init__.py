"""OS-level helpers: accounts, resource limits, volumes and checked paths in users' files.

Everything here talks to the real operating system (mostly as root) and blocks; callers run
these functions in a thread. Failures raise :class:`SystemOpError` with a message meant for a
person, including the failing command and its stderr.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Container, Mapping, Sequence
from functools import cache

# Where the hub (root) looks for system tools: never PATH, never a directory a user could
# write or mount over (/usr/local is the operator's, but a volume mounted there by mistake
# or by an attack would hand root the user's program).
TOOL_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
# How root opens a directory in a place a user can write: never through a link, and a
# FIFO or device there fails instead of blocking.
NO_FOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class SystemOpError(RuntimeError):
    """An operating-system operation (command, cgroup write, mount) failed."""


@cache
def tool(name: str) -> str:
    """The absolute path of system tool ``name``, from :data:`TOOL_DIRS` only.

    Root runs nothing by bare name: ``PATH`` lookups would run whatever a user managed to
    place earlier in it. An absolute ``name`` is returned as it is (the config chose it).
    """
    if os.path.isabs(name):
        return name
    if "/" in name or not name:
        raise SystemOpError(f"not a tool name: {name!r}")
    for folder in TOOL_DIRS:
        path = os.path.join(folder, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise SystemOpError(f"`{name}` is not installed (looked in {', '.join(TOOL_DIRS)})")


def run(
    cmd: Sequence[str],
    *,
    ok_codes: Container[int] = (0,),
    timeout: float = 120,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (no shell) and turn any failure into a readable :class:`SystemOpError`.

    Output is forced to the C locale so callers can match stderr text (e.g. "busy").
    Exit codes in ``ok_codes`` are returned to the caller instead of raising, for commands
    whose "failure" is an expected outcome (e.g. "user already exists"). A bare command
    name is resolved with :func:`tool`.
    """
    argv = list(cmd)
    argv[0] = tool(argv[0])
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env={**(os.environ if env is None else env), "LC_ALL": "C"},
            check=False,
        )
    except FileNotFoundError as exc:
        raise SystemOpError(f"`{argv[0]}` is not installed (running {shlex.join(argv)})") from exc
    except subprocess.TimeoutExpired as exc:
        raise SystemOpError(f"`{shlex.join(argv)}` did not finish within {timeout} s") from exc
    if proc.returncode not in ok_codes:
        detail = proc.stderr.strip() or proc.stdout.strip() or "no output"
        raise SystemOpError(f"`{shlex.join(argv)}` failed (exit code {proc.returncode}): {detail}")
    return proc
