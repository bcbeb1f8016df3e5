"""OS-level helpers for the local backend: accounts, resource limits and volumes.

Everything here talks to the real operating system (mostly as root) and blocks; callers run
these functions in a thread. Failures raise :class:`SystemOpError` with a message meant for a
person, including the failing command and its stderr.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Container, Sequence


class SystemOpError(RuntimeError):
    """An operating-system operation (command, cgroup write, mount) failed."""


def run(
    cmd: Sequence[str], *, ok_codes: Container[int] = (0,), timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (no shell) and turn any failure into a readable :class:`SystemOpError`.

    Output is forced to the C locale so callers can match stderr text (e.g. "busy").
    Exit codes in ``ok_codes`` are returned to the caller instead of raising, for commands
    whose "failure" is an expected outcome (e.g. "user already exists").
    """
    argv = list(cmd)
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "LC_ALL": "C"},
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
