"""The hub's side of fork servers (``backend.local.fork_server``): one per environment.

A server start imports Jupyter Server, JupyterLab and JupyterHub's extension: about a
CPU-second, nearly all of a start's cost. A fork server (``fork_server.py``, run by the
environment's own Python as root) imports them once and forks each server; the forked child
takes the place of a stand-in process that the local backend's usual chain has put in the
server's cgroup, mount namespace, account and directory. The standard library's
``multiprocessing.forkserver`` forks workers of the same program and user, not into other
accounts' namespaces, so it does not fit.

Used only for environments that only root can change (the parent runs their code as root).
An environment built on a shared server layer (``envs/server_layer.py``) is forked from
the layer's fork server, which has imported nothing of any repository: the child, as the
user, puts the environment's site-packages ahead of the layer's and takes its prefix and
interpreter (see ``enter_environment`` in fork_server.py). A child that finds a module ahead
of the layer's that differs from what the parent imported (a package of the user's
``~/.local`` or the environment at another version) starts the server afresh instead.
"""

from __future__ import annotations

import array
import json
import logging
import os
import socket
import stat
import subprocess
import threading
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubstack.envs.conda_layer import forks_from
from hubstack.launch.plan import PYTHON

if TYPE_CHECKING:
    from hubstack.launch.plan import BuiltRepository

log = logging.getLogger("hubstack.local")

_CODE = resources.files("hubstack.backends").joinpath("fork_server.py").read_text()
_LISTEN_CODE = resources.files("hubstack.backends").joinpath("listen_fd.py").read_text()
_READY_TIMEOUT_S = 120.0
_REPLY_LIMIT = 64 * 1024
# Read at interpreter start or import time (see fork_server.py), or by the dynamic loader
# at start (LD_LIBRARY_PATH): a server whose environment sets one is started the usual way.
IMPORT_TIME_PREFIXES = ("PYTHON", "JUPYTERHUB_SINGLEUSER_", "LD_")
# Except these, which the forked child applies itself.
APPLIED_IN_CHILD = ("PYTHONPATH",)


class ForkFailed(Exception):
    """The fork server could not start this server; the usual start still can."""


def root_only(prefix: Path, python: Path) -> bool:
    """Whether only root can change the environment's code: the fork server runs it as root.

    Its directories and interpreter must be root's and writable by no one else, and so must
    every directory above it (unless sticky, as /tmp is: no one else can rename root's
    entries there)."""
    site = sorted(prefix.glob("lib/python3*/site-packages"))
    for path in (prefix, prefix / "bin", *site, python.resolve(), *prefix.parents):
        try:
            info = os.stat(path)
        except OSError:
            return False
        writable = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        above = path in prefix.parents and info.st_mode & stat.S_ISVTX
        if info.st_uid != 0 or (writable and not above):
            return False
    return bool(site)


def installed_stamp(python: Path) -> tuple[int, ...]:
    """When the environment's packages last changed: installers (pip, uv, conda) add and
    remove each package's metadata directory in site-packages, which changes its mtime, and
    a new interpreter replaces ``python``. A fork server older than that would fork servers
    with the old modules in memory beside the new files on disk."""
    site = sorted(python.parent.parent.glob("lib/python3*/site-packages"))
    stamp = []
    for path in (python.resolve(), *site):
        try:
            stamp.append(os.stat(path).st_mtime_ns)
        except OSError:
            stamp.append(0)
    return tuple(stamp)


def forkable(env: dict[str, str]) -> bool:
    return not any(
        name.startswith(IMPORT_TIME_PREFIXES) and name not in APPLIED_IN_CHILD for name in env
    )


def layer_python(built: BuiltRepository) -> Path | None:
    """The Python of the server layer whose fork server may fork servers of ``built``: an
    environment on a layer and of its interpreter, or a conda environment with every
    package of its Python's conda server layer (see envs/conda_layer.py); without a
    ``start`` script (which wraps the server) or Debian packages (whose libraries the
    loader looks for only at start). Blocking: reads the cache (root's)."""
    if built.apt or (built.content is not None and built.content.start is not None):
        return None
    if built.fork_layer is not None:
        return built.fork_layer / PYTHON if forks_from(built.prefix, built.fork_layer) else None
    if built.layer is None:
        return None
    python = built.layer / PYTHON
    if (built.prefix / PYTHON).resolve() != python.resolve():
        return None
    return python


class ForkServer:
    """One environment's fork server: started on first use, ended with the hub.

    It runs in its own session, so a signal to the hub's process group leaves it alone; it
    ends when the hub's end of the control socket closes, also on ``kill -9`` of the hub,
    and the servers it forked run on. Once the environment's packages change (see
    :func:`installed_stamp`), the next start ends it and starts a new one.
    """

    def __init__(self, python: Path, log_path: Path) -> None:
        self.python = python
        self.log_path = log_path
        self._control: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._exits: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stamp: tuple[int, ...] = ()

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {"PATH": f"{self.python.parent}:/usr/bin:/bin", "LANG": "C.UTF-8"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            with self.log_path.open("ab") as out:
                self._proc = subprocess.Popen(
                    [str(self.python), "-I", "-c", _CODE, _LISTEN_CODE, str(theirs.fileno())],
                    env=env,
                    cwd="/",
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        finally:
            theirs.close()
        ours.settimeout(_READY_TIMEOUT_S)
        try:
            ready = ours.recv(64)
        except OSError:
            ready = b""
        if ready != b"ready\n":
            ours.close()
            self._proc.kill()
            self._proc.wait()
            raise ForkFailed(
                f"the fork server of {self.python} did not start (see {self.log_path})"
            )
        ours.settimeout(None)
        threading.Thread(target=self._read_exits, args=(ours, self._proc), daemon=True).start()
        log.info("fork server of %s ready (pid %d)", self.python, self._proc.pid)
        return ours

    def _read_exits(self, control: socket.socket, proc: subprocess.Popen[bytes]) -> None:
        """Exit statuses of forked servers (the fork server is their parent, not the hub)."""
        while True:
            try:
                message = control.recv(64)
            except OSError:
                message = b""
            if not message:
                break
            pid, status = (int(part) for part in message.split())
            with self._lock:
                self._exits[pid] = status
        with self._lock:
            if self._control is control:
                self._control = None  # the next start starts a new fork server
        control.close()
        proc.wait()

    def exit_status(self, pid: int) -> int | None:
        with self._lock:
            return self._exits.get(pid)

    def ensure_started(self) -> None:
        """Start the fork server unless it runs with the environment's current packages;
        ForkFailed if it cannot. Blocking."""
        stamp = installed_stamp(self.python)
        with self._lock:
            if self._control is not None and stamp != self._stamp:
                log.info("the packages of %s changed: starting a new fork server", self.python)
                # Wakes the reader thread and ends the old parent; its servers run on.
                self._control.shutdown(socket.SHUT_RDWR)
                self._control = None
            if self._control is None:
                self._control = self._start()
                self._stamp = stamp

    def fork(self, start: dict[str, Any], listening: int, log_fd: int, timeout: float) -> int:
        """Fork a server in place of ``start["standin"]``; its pid. Blocking (a thread)."""
        self.ensure_started()
        with self._lock:
            control = self._control
        if control is None:
            raise ForkFailed(f"the fork server of {self.python} has ended")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with ours:
            try:
                control.sendmsg([b"f"], [_rights(theirs.fileno())])
            except OSError as exc:
                raise ForkFailed(f"the fork server of {self.python} is gone: {exc}") from None
            finally:
                theirs.close()
            ours.sendmsg([json.dumps(start).encode()], [_rights(listening, log_fd)])
            ours.settimeout(timeout)
            try:
                reply = json.loads(ours.recv(_REPLY_LIMIT) or b"{}")
            except (OSError, ValueError) as exc:
                raise ForkFailed(f"no answer from the fork server: {exc}") from None
        if "pid" not in reply:
            raise ForkFailed(str(reply.get("error", "the fork server closed the start")))
        return int(reply["pid"])


def _rights(*fds: int) -> tuple[int, int, bytes]:
    return (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())


class ForkServers:
    """The fork servers of the hub's environments, by their Python."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._servers: dict[Path, ForkServer] = {}
        self._lock = threading.Lock()

    def of(self, python: Path) -> ForkServer:
        with self._lock:
            if python not in self._servers:
                name = "-".join(python.parts[1:-2]) or "python"
                self._servers[python] = ForkServer(python, self.log_dir / f"fork-server-{name}.log")
            return self._servers[python]

    def exit_status(self, pid: int) -> int | None:
        with self._lock:
            servers = list(self._servers.values())
        for server in servers:
            status = server.exit_status(pid)
            if status is not None:
                return status
        return None


def server_argv(argv: tuple[str, ...], executable: Path) -> list[str]:
    """The server's own command line in a plan whose argv runs it through listen_fd.py."""
    return list(argv[argv.index(str(executable)) :])
